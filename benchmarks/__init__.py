"""core4nb's benchmarks: the same workloads on core4nb and the tools users would pick
instead (serial Python, ProcessPoolExecutor, loky, Dask, ipyparallel), in one run,
with the same worker count, on this machine.

    python -m benchmarks all --size full          # writes benchmarks/RESULTS.md
    python -m benchmarks primes --backends serial,process,core4nb --size tiny

Modules: ``work`` (the functions run), ``backends`` (one session interface per
tool), ``workloads`` (primes, overhead, latency, startup), ``scaling`` (simulated
worker nodes), ``queue_rate`` (claims/s, store round trips), ``counting``,
``nodes``, ``env``, ``targets``, ``report`` and ``plots``; ``hook/`` counts store calls in
processes the benchmark starts.
"""
