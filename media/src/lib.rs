//! RTP/RTCP relay plane with batched-UDP and DPDK backends; filled by the media issue.
