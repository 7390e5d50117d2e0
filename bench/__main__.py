"""`python -m bench` (`make bench`): every benchmark, one after another."""

from bench import discovery, instrumentation

if __name__ == "__main__":
    discovery.main()
    print()
    instrumentation.main()
