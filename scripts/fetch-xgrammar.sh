#!/usr/bin/env bash
# Puts the sources of xgrammar 0.2.9 (the grammar engine behind structured output) in a cache
# folder outside git, ${PP_XGRAMMAR_DIR:-~/.cache/pp/xgrammar-0.2.9}, and prints that path. They
# come from the package's sdist on PyPI (its C++ core is built into pp by cmake/PpXgrammar.cmake;
# the Python bindings are not used). The archive's sha256 is checked. Idempotent.
set -euo pipefail
version=0.2.9
sha=87b466bca2475e29bb0323abc62c6c33cbcbcff47e5fb800a3e2099ac9620b90
dir=${PP_XGRAMMAR_DIR:-$HOME/.cache/pp/xgrammar-$version}
if [ -f "$dir/.pp-complete" ]; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The sdist's address from PyPI's simple index (PEP 691 JSON), then the file itself. pip itself
# would run the package's build backend just to download an sdist.
python3 - "$tmp" "$version" "$sha" <<'PY'
import hashlib, json, os, sys, urllib.request
out, version, sha = sys.argv[1:4]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
name = "xgrammar-%s.tar.gz" % version
req = urllib.request.Request(index + "/xgrammar/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req, timeout=120) as r:
    files = json.load(r)["files"]
url = next((f["url"] for f in files if f["filename"] == name), None)
if url is None:
    sys.exit("fetch-xgrammar: error: %s is not on %s" % (name, index))
with urllib.request.urlopen(url, timeout=300) as r:
    data = r.read()
got = hashlib.sha256(data).hexdigest()
if got != sha:
    sys.exit("fetch-xgrammar: error: '%s' has sha256 %s, expected %s" % (name, got, sha))
with open(os.path.join(out, name), "wb") as f:
    f.write(data)
PY
tar -xzf "$tmp/xgrammar-$version.tar.gz" -C "$tmp"
mkdir -p "$(dirname "$dir")"
rm -rf "$dir.part"
mv "$tmp/xgrammar-$version" "$dir.part"
touch "$dir.part/.pp-complete"
rm -rf "$dir"
mv "$dir.part" "$dir"
echo "$dir"
