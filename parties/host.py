"""`python -m parties.host JOB.toml`: run the host of a job in this process."""
import sys

from .party import main_for_role

if __name__ == "__main__":
    sys.exit(main_for_role("host"))
