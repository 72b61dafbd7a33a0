"""`bb-loadtest`: many agents over many conversations against a Blackboard server.

Scenarios (`scenarios.py`, a registry) drive the server closed-loop (N calls in
flight) or open-loop (a target rate, latency measured from each call's intended
send time); `stats.py` records latencies in HdrHistograms; `check.py` proves at
the end that no acknowledged write was lost, that every subscriber saw every
revision once and in order, and that counters are exact; `report.py` and
`html.py` print and plot it; `baselines.py` runs the same shape against a bare
gRPC echo server, Redis Lua writes and etcd, for ratios; `bench.py` is
`make bench`.
"""
