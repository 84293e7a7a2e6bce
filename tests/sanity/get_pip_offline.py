"""Offline stand-in for pip's get-pip.py bootstrap script.

ansible-test downloads get-pip-<version>.py from the internet the first time it builds a virtualenv, and this
machine reaches no host but the package registries. scripts/ansible-test.sh places this file where ansible-test
looks for its cached copy (~/.ansible/test/cache/get_pip_<version>.py). It bootstraps pip with the standard
library's ensurepip, then lets that pip install what ansible-test asked for from the configured package index.
"""

import os
import subprocess
import sys

# Options only get-pip.py understands; pip install would reject them.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main():
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    env = dict(os.environ)
    # ensurepip sets PIP_CONFIG_FILE=/dev/null for its own run; inheriting it would hide the machine's pip.conf
    # (its index and CA settings), so it must not reach the real install.
    env.pop("PIP_CONFIG_FILE", None)
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args, env=env))


if __name__ == "__main__":
    main()
