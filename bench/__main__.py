"""`python -m bench` (`make bench`): every benchmark, one after another."""

from bench import discovery

if __name__ == "__main__":
    discovery.main()
