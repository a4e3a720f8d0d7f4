"""Locates llama.cpp's source (for its converter, convert_hf_to_gguf.py) from the
llama-cpp-python sdist on PyPI, unpacked once into ~/.cache/tessera/peers."""
import os
import pathlib
import subprocess
import sys
import tarfile

VERSION = "0.3.36"  # keep in step with requirements-dev.txt


def llama_cpp_source() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("TESSERA_CACHE", pathlib.Path.home() / ".cache" / "tessera")) / "peers"
    root = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={VERSION}", "-d", str(cache)], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(cache, filter="data")
    return root
