"""The one error type of the library. Every refusal that reaches the command line (a bad setting, data that does
not load, a run directory in use, a model the KV state cannot hold, ...) is a RunError whose message is one line
naming the fix; only run.py turns it into "run.py: error: ..." and exit code 2. The modules' own names for it
(config.ConfigError, data.DataError, rundir.RunDirError, ...) are subclasses, so a caller that goes on after a
refusal (a sweep skipping one cell) can tell a busy folder from a bad setting, and the CLI catches just this one."""


class RunError(Exception):
    """Something the user must change before the run can go on; str(error) is one line saying what."""
