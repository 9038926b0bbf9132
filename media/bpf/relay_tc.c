// SPDX-License-Identifier: GPL-2.0
// relay_tc.c -- the media relay's in-kernel fast path (TC ingress classifier).
//
// A latched stream is an entry of the pinned hash map `relay_streams`, keyed by the
// relay's own address and port the stream arrives at. A datagram for such a key whose
// source is the entry's (latched) source is rewritten to leave from the relay's other
// port toward the other side's peer and redirected out of the entry's interface, so it
// never reaches a socket. Everything else (first packets before latching, other
// sources, IP options, fragments, other protocols) goes on to the stack unchanged and
// user space decides.
//
// Layouts must match media/src/kernel.rs (all addresses and ports in network order).
//
// Build: clang -O2 -g -target bpf -c relay_tc.c -o relay_tc.o
// Attach: tc qdisc add dev lo clsact; tc filter add dev lo ingress bpf da obj relay_tc.o sec tc

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct stream_key {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct stream_val {
	// the latched source: only it is forwarded here
	__u32 src_addr;
	__u16 src_port;
	__u16 flags;
	// the relay's address and port on the other side (new source)
	__u32 out_saddr;
	__u16 out_sport;
	__u16 pad1;
	// the other side's peer (new destination)
	__u32 out_daddr;
	__u16 out_dport;
	__u16 pad2;
	// interface to send from
	__u32 ifindex;
	__u32 pad3;
	// counters, written here only
	__u64 packets;
	__u64 bytes;
	__u64 last_ns;
};

// Redirect with bpf_redirect_neigh (route + next hop's Ethernet header) rather than as
// is: every interface but `lo`.
#define FLAG_NEIGH 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stream_key);
	__type(value, struct stream_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} relay_streams SEC(".maps");

#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define UDP_CSUM_OFF (ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define UDP_SPORT_OFF (ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, source))

SEC("tc")
int relay_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return TC_ACT_OK;
	// fragments (MF set or an offset) carry no or partial UDP headers
	if (ip->frag_off & bpf_htons(0x3fff))
		return TC_ACT_OK;

	struct stream_key key = { .addr = ip->daddr, .port = udp->dest };
	struct stream_val *v = bpf_map_lookup_elem(&relay_streams, &key);
	if (!v || v->src_addr != ip->saddr || v->src_port != udp->source)
		return TC_ACT_OK;

	__u32 old_saddr = ip->saddr, old_daddr = ip->daddr;
	__u16 old_sport = udp->source, old_dport = udp->dest;
	__u32 new_saddr = v->out_saddr, new_daddr = v->out_daddr;
	__u16 new_sport = v->out_sport, new_dport = v->out_dport;
	__u32 ifindex = v->ifindex;
	__u16 flags = v->flags;

	// The UDP checksum covers the addresses through the pseudo header; a zero one
	// (none) must stay zero, hence MARK_MANGLED_0.
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_saddr, new_saddr,
			    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(__u32));
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_daddr, new_daddr,
			    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(__u32));
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_sport, new_sport,
			    BPF_F_MARK_MANGLED_0 | sizeof(__u16));
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_dport, new_dport,
			    BPF_F_MARK_MANGLED_0 | sizeof(__u16));
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_saddr, new_saddr, sizeof(__u32));
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_daddr, new_daddr, sizeof(__u32));

	// saddr+daddr and source+dest are adjacent: one store each
	__u32 addrs[2] = { new_saddr, new_daddr };
	__u16 ports[2] = { new_sport, new_dport };
	if (bpf_skb_store_bytes(skb, IP_SRC_OFF, addrs, sizeof(addrs), 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, UDP_SPORT_OFF, ports, sizeof(ports), 0) < 0)
		return TC_ACT_SHOT;

	__sync_fetch_and_add(&v->packets, 1);
	// UDP payload bytes, as user space counts them
	__sync_fetch_and_add(&v->bytes, skb->len - (ETH_HLEN + sizeof(*ip) + sizeof(*udp)));
	v->last_ns = bpf_ktime_get_ns();

	// Off a real NIC the Ethernet header must be rebuilt for the next hop: without
	// next-hop parameters bpf_redirect_neigh routes the rewritten packet out of
	// ifindex itself (bpf_fib_lookup would first need IP forwarding on the interface).
	if (flags & FLAG_NEIGH)
		return bpf_redirect_neigh(ifindex, 0, 0, 0);
	return bpf_redirect(ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
