"""Runs one pytest file for ctest; exits 77 (ctest's SKIP_RETURN_CODE) when a package it needs
is missing, so a machine without `pip install openai pytest` skips instead of failing."""
import importlib.util
import sys

NEEDS = {"test_openai_client.py": ["pytest", "openai"], "test_openai_tools.py": ["pytest", "openai"],
         "test_http_load.py": ["pytest"]}

def main() -> int:
    path = sys.argv[1]
    name = path.rsplit("/", 1)[-1]
    missing = [m for m in NEEDS.get(name, ["pytest"]) if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: python packages missing: {', '.join(missing)} (scripts/setup.sh installs them)")
        return 77
    import pytest
    return int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", path]))

if __name__ == "__main__":
    sys.exit(main())
