#!/usr/bin/env python3
"""Real-softphone client for the end-to-end tests (pjsua2 from PyPI `pjsua2-python`).

  pjsua_client.py register --registrar HOST:PORT --user U --password P --port LOCAL [--algo md5|sha256]
      registers once; prints {"status": CODE, "reason": ...}; exit 0 on 200.

  pjsua_client.py call --registrar HOST:PORT --a U:P --b U:P --port-a N --port-b N
                       --rtp-a N --rtp-b N [--seconds S]
      one pjsua2 endpoint with two accounts (own UDP transports, own RTP ports): both
      register, A calls B through the node, B answers automatically, both play a 440/880 Hz
      tone from a generated WAV (null sound device, VAD off), after S seconds of talk A hangs
      up. Prints {"answered": bool, "caller": {"rx":..,"tx":..}, "callee": {...}} with the
      RTP packet counts of each side (pjmedia stream statistics); exit 0 when media flowed
      both ways.

Every wait is bounded; the process gives up after --deadline seconds (default 40).
"""
import argparse
import json
import math
import os
import struct
import sys
import tempfile
import time
import wave

import pjsua2 as pj


def make_wav(path, freq, seconds=2, rate=8000):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
            for i in range(rate * seconds)
        )
        w.writeframes(frames)


class Endpoint:
    def __init__(self):
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.logConfig.level = int(os.environ.get("PJ_LOG_LEVEL", "2"))
        cfg.logConfig.consoleLevel = cfg.logConfig.level
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 4
        cfg.medConfig.noVad = True
        cfg.medConfig.hasIoqueue = True
        self.ep.libInit(cfg)

    def transport(self, port):
        tc = pj.TransportConfig()
        tc.port = port
        tc.boundAddress = "127.0.0.1"
        tc.publicAddress = "127.0.0.1"
        return self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)

    def start(self):
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()

    def poll(self, ms=20):
        self.ep.libHandleEvents(ms)

    def destroy(self):
        try:
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.poll(20)
        except Exception:
            pass
        self.ep.libDestroy()


def account_config(registrar, user, password, tp_id, rtp_port, algo=None):
    ac = pj.AccountConfig()
    host = registrar
    ac.idUri = "sip:%s@%s" % (user, host)
    ac.regConfig.registrarUri = "sip:%s" % registrar
    ac.regConfig.timeoutSec = 300
    ac.regConfig.retryIntervalSec = 0
    cred = pj.AuthCredInfo("digest", "*", user, 0, password)
    if algo == "sha256":
        try:
            cred.algoType = pj.PJSIP_AUTH_ALGORITHM_SHA256
        except Exception:
            pass
    ac.sipConfig.authCreds.append(cred)
    ac.sipConfig.transportId = tp_id
    if rtp_port:
        ac.mediaConfig.transportConfig.port = rtp_port
        ac.mediaConfig.transportConfig.portRange = 10
    ac.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    ac.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    return ac


class Acc(pj.Account):
    def __init__(self, owner, name):
        pj.Account.__init__(self)
        self.owner = owner
        self.name = name
        self.reg_code = 0
        self.reg_reason = ""

    def onRegState(self, prm):
        self.reg_code = prm.code
        self.reg_reason = prm.reason

    def onIncomingCall(self, prm):
        call = Call(self, self.owner, "callee", prm.callId)
        self.owner.calls["callee"] = call
        op = pj.CallOpParam()
        op.statusCode = 200
        call.answer(op)


class Call(pj.Call):
    def __init__(self, acc, owner, role, call_id=pj.PJSUA_INVALID_ID):
        pj.Call.__init__(self, acc, call_id)
        self.owner = owner
        self.role = role
        self.player = None
        self.state = ""
        self.last_code = 0

    def onCallState(self, prm):
        ci = self.getInfo()
        self.state = ci.stateText
        self.last_code = ci.lastStatusCode

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                am = self.getAudioMedia(i)
                if self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.owner.wav[self.role], 0)
                self.player.startTransmit(am)

    def rtp(self):
        try:
            st = self.getStreamStat(0)
            return {"rx": st.rtcp.rxStat.pkt, "tx": st.rtcp.txStat.pkt}
        except Exception as e:  # no media stream
            return {"rx": 0, "tx": 0, "error": str(e)}


class Runner:
    def __init__(self, deadline):
        self.t_end = time.monotonic() + deadline
        self.calls = {}
        self.wav = {}

    def left(self):
        return self.t_end - time.monotonic()


def wait_until(ep, runner, cond, limit):
    t = time.monotonic() + limit
    while time.monotonic() < t and runner.left() > 0:
        if cond():
            return True
        ep.poll(20)
    return cond()


def cmd_register(args):
    runner = Runner(args.deadline)
    ep = Endpoint()
    code, reason = 0, "timeout"
    try:
        tp = ep.transport(args.port)
        ep.start()
        acc = Acc(runner, "a")
        acc.create(account_config(args.registrar, args.user, args.password, tp, 0, args.algo))
        wait_until(ep, runner, lambda: acc.reg_code >= 200, 15)
        code, reason = acc.reg_code, acc.reg_reason
        print(json.dumps({"status": code, "reason": reason}), flush=True)
        acc.shutdown()
    finally:
        ep.destroy()
    return 0 if code == 200 else 1


def cmd_call(args):
    runner = Runner(args.deadline)
    tmp = tempfile.mkdtemp(prefix="pjsua-e2e-")
    runner.wav["caller"] = os.path.join(tmp, "a.wav")
    runner.wav["callee"] = os.path.join(tmp, "b.wav")
    make_wav(runner.wav["caller"], 440)
    make_wav(runner.wav["callee"], 880)
    ua, pa = args.a.split(":", 1)
    ub, pb = args.b.split(":", 1)
    ep = Endpoint()
    result = {"answered": False, "caller": {}, "callee": {}, "error": None}
    try:
        tpa = ep.transport(args.port_a)
        tpb = ep.transport(args.port_b)
        ep.start()
        acc_a = Acc(runner, "a")
        acc_a.create(account_config(args.registrar, ua, pa, tpa, args.rtp_a))
        acc_b = Acc(runner, "b")
        acc_b.create(account_config(args.registrar, ub, pb, tpb, args.rtp_b))
        wait_until(ep, runner, lambda: acc_a.reg_code >= 200 and acc_b.reg_code >= 200, 15)
        result["register"] = {"a": acc_a.reg_code, "b": acc_b.reg_code}
        if acc_a.reg_code != 200 or acc_b.reg_code != 200:
            raise RuntimeError("registration failed: %r" % result["register"])
        call = Call(acc_a, runner, "caller")
        runner.calls["caller"] = call
        call.makeCall("sip:%s@%s" % (ub, args.registrar), pj.CallOpParam(True))

        def confirmed():
            c = runner.calls.get("callee")
            return call.state == "CONFIRMED" and c is not None and c.state == "CONFIRMED"

        if not wait_until(ep, runner, confirmed, 15):
            raise RuntimeError("call not confirmed: caller=%s (%s)" % (call.state, call.last_code))
        result["answered"] = True
        wait_until(ep, runner, lambda: False, args.seconds)
        result["caller"] = call.rtp()
        result["callee"] = runner.calls["callee"].rtp()
        call.hangup(pj.CallOpParam(True))
        gone = ("DISCONNECTED", "DISCONNCTD")
        wait_until(ep, runner, lambda: call.state in gone and runner.calls["callee"].state in gone, 5)
        result["caller_end"] = call.state
        result["callee_end"] = runner.calls["callee"].state
    except Exception as e:
        result["error"] = str(e)
    finally:
        print(json.dumps(result), flush=True)
    ok = (
        result["answered"]
        and result["caller"].get("rx", 0) > 0
        and result["callee"].get("rx", 0) > 0
        and not result["error"]
    )
    # pjsua2's C++ destructors of Call/Player objects assert when they run after (or
    # during) libDestroy from Python's garbage collector: hang up, let the BYE go out,
    # then leave without running destructors.
    try:
        ep.ep.hangupAllCalls()
        wait_until(ep, runner, lambda: False, 0.3)
    except Exception:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if ok else 1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("register")
    r.add_argument("--registrar", required=True)
    r.add_argument("--user", required=True)
    r.add_argument("--password", required=True)
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--algo", choices=["md5", "sha256"], default=None)
    r.add_argument("--deadline", type=float, default=40)
    c = sub.add_parser("call")
    c.add_argument("--registrar", required=True)
    c.add_argument("--a", required=True)
    c.add_argument("--b", required=True)
    c.add_argument("--port-a", type=int, default=0)
    c.add_argument("--port-b", type=int, default=0)
    c.add_argument("--rtp-a", type=int, default=0)
    c.add_argument("--rtp-b", type=int, default=0)
    c.add_argument("--seconds", type=float, default=3)
    c.add_argument("--deadline", type=float, default=40)
    args = p.parse_args()
    sys.exit(cmd_register(args) if args.cmd == "register" else cmd_call(args))


if __name__ == "__main__":
    main()
