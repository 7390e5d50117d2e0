"""`python -m bench` (`make bench`): every benchmark, one after another.

The dispatch benchmark takes long (about 40 minutes with its defaults); narrow it with
BENCH_COUNTS, BENCH_STORES, BENCH_MODES, BENCH_SECONDS and BENCH_REPEATS. The fault benchmark
takes about 5 minutes (BENCH_FAULT_STORES, BENCH_FAULT_JOBS, BENCH_FAULT_CYCLES, BENCH_FAULT_SEED).
"""

from bench import discovery, dispatch, faults, footprint, pipeline

if __name__ == "__main__":
    discovery.main()
    print()
    pipeline.main()
    print()
    footprint.main()
    print()
    dispatch.main()
    print()
    faults.main()
