"""`python -m scheduler`: the same command line as `scheduler`."""

from scheduler.cli import main

if __name__ == "__main__":
    main()
