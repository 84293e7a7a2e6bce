#!/usr/bin/env bash
# Runs ansible-test on this checkout, offline:
#  - ansible-test wants the collection under .../ansible_collections/immersiverse/dr: we copy the files git knows
#    (tracked and untracked-but-not-ignored) there, less the lab and development tooling that galaxy.yml's
#    build_ignore keeps out of the collection (lab/, scripts/, bench/, molecule/, requirements/, .ci/);
#  - its pip bootstrap download is replaced by tests/sanity/get_pip_offline.py (see that file for why).
# Usage: scripts/ansible-test.sh sanity [args...] | units [args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
# Outside the checkout: inside it, ansible-test would find our git tree, see .cache ignored, and skip all.
DEST=${ANSIBLE_TEST_WORKDIR:-/var/tmp/immersiverse-dr-ansible-test}/ansible_collections/immersiverse/dr

pip_version=$("$VENV/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)
cache=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
mkdir -p "$(dirname "$cache")"
cmp -s tests/sanity/get_pip_offline.py "$cache" 2>/dev/null || cp tests/sanity/get_pip_offline.py "$cache"

mkdir -p "$DEST"
list=$(mktemp); trap 'rm -f "$list"' EXIT
git ls-files -z --cached --others --exclude-standard \
  | grep -zvE '^(lab|scripts|bench|molecule|requirements|\.ci)/' >"$list"
rsync -a --from0 --files-from="$list" ./ "$DEST/"
# Remove what is no longer in the list (ansible-test's own tests/output stays as its cache).
(cd "$DEST" && find . -type f ! -path './tests/output/*' -printf '%P\0') \
  | grep -zvxF -f <(tr '\0' '\n' <"$list") | (cd "$DEST" && xargs -0 -r rm -f)  || true
rm -f "$list"
cd "$DEST"
# ansible-test reads the git tree when there is one; this copy has none, so it lists the files present.
export PATH=$VENV/bin:$PATH
exec "$VENV/bin/ansible-test" "$@"
