"""`python -m parties.arbiter JOB.toml`: run the arbiter of a job in this process."""
import sys

from .party import main_for_role

if __name__ == "__main__":
    sys.exit(main_for_role("arbiter"))
