"""Building the anchors' `llama-bench` and converting a checkpoint to their GGUF.

Nothing of llama.cpp or ik_llama.cpp is in this repository.
- llama.cpp: `download_sdist` takes the llama.cpp tree that PyPI's llama-cpp-python sdist
  vendors (`pip download --no-binary llama-cpp-python --no-deps llama-cpp-python`, the newest
  release unless a version is asked) into a cache folder, and `build` builds `llama-bench`
  there.
- ik_llama.cpp has no package: `build` takes a source tree given by path (e.g. a clone of
  github.com/ikawrakow/ik_llama.cpp), whose `llama-bench` is one of its examples.
Both are built with the system cmake and C++ compiler: CPU only, tuned for this machine's ISA
(GGML_NATIVE), no network code, `nice -n 10`.

`convert` runs llama.cpp's own `convert_hf_to_gguf.py` with its vendored gguf-py, which keeps
gpt-oss's MXFP4 experts as MXFP4; both anchors read that GGUF. A random checkpoint has no
tokenizer files, and the converter needs one (it writes the vocabulary into the GGUF and hashes
the pre-tokenizer): `convert` gives it a folder of symlinks to the checkpoint's files plus a
`tokenizer.json` built from the exact o200k_base ranks (OPENHARMONY_VOCAB, the file openharmony
reads) with transformers' tiktoken converter and gpt-oss's special tokens. The weights are
random, so no benchmark depends on the vocabulary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
# The cmake options of a CPU-only build of llama-bench for this machine, and why:
COMMON_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",           # -march=native: the ISA of this machine (AVX-512 here)
    "-DBUILD_SHARED_LIBS=OFF",    # one self-contained binary, nothing to put on a library path
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF",           # no network code: the model is a local file
)
CMAKE_OPTIONS = {
    "llama.cpp": (*COMMON_OPTIONS, "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                  "-DLLAMA_BUILD_APP=OFF"),
    # ik_llama.cpp's llama-bench is an example.
    "ik_llama.cpp": (*COMMON_OPTIONS, "-DLLAMA_BUILD_EXAMPLES=ON"),
}
TARGET = "llama-bench"


# -- build --------------------------------------------------------------------------------


def download_sdist(cache_dir: Path, version: str | None = None) -> Path:
    """The llama-cpp-python sdist in `cache_dir`/llama_cpp (downloaded once)."""
    folder = cache_dir / "llama_cpp"
    pattern = f"llama_cpp_python-{version or '*'}.tar.gz"
    found = sorted(folder.glob(pattern))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        spec = f"{PACKAGE}=={version}" if version else PACKAGE
        # The sdist of this one package; its build requirements (pip prepares its metadata) come
        # as wheels: `--no-binary :all:` would compile them, cmake included, from source.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", PACKAGE,
                        "--no-deps", "--dest", str(folder), spec], check=True)
        found = sorted(folder.glob(pattern))
    if not found:
        raise RuntimeError(f"pip download left no {pattern} in {folder}")
    return found[-1]


def source_tree(sdist: Path) -> Path:
    """The llama.cpp tree that `sdist` vendors, extracted next to it (once)."""
    top = sdist.parent / sdist.name.removesuffix(".tar.gz")
    tree = top / "vendor" / "llama.cpp"
    if not (tree / "CMakeLists.txt").exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(sdist.parent, filter="data")
    if not (tree / "CMakeLists.txt").exists():
        raise RuntimeError(f"{sdist} has no vendor/llama.cpp/CMakeLists.txt")
    return tree


def build(anchor: str, tree: Path, jobs: int = 2) -> Path:
    """Build `anchor`'s llama-bench in `tree`/build; its path."""
    build_dir = tree / "build"
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-S", str(tree), "-B", str(build_dir),
                    *CMAKE_OPTIONS[anchor]], check=True)
    subprocess.run([*nice, "cmake", "--build", str(build_dir), "--target", TARGET,
                    f"-j{jobs}"], check=True)
    return bench_binary(tree)


def bench_binary(tree: Path) -> Path:
    return tree / "build" / "bin" / "llama-bench"


def find_tree(cache_dir: Path) -> Path:
    """The extracted llama.cpp tree in `cache_dir` (the newest, if several)."""
    trees = sorted((cache_dir / "llama_cpp").glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not trees:
        raise FileNotFoundError(f"no llama.cpp tree in {cache_dir}/llama_cpp: run "
                                f"`scripts/llama_cpp.py build` first")
    return trees[-1]


# -- convert ------------------------------------------------------------------------------


def write_tokenizer(folder: Path, vocab_file: Path) -> None:
    """tokenizer.json and tokenizer_config.json of o200k_harmony in `folder`: the BPE of
    `vocab_file` (o200k_base.tiktoken) with tiktoken's pattern and special tokens, through
    transformers' own tiktoken converter."""
    from ..tokenizer import o200k_harmony_definition
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    definition = o200k_harmony_definition()
    # tiktoken names id 200018 twice (<|endofprompt|> and <|reserved_200018|>); a Hugging Face
    # tokenizer numbers its added tokens in order, so each id gets exactly one name: the
    # first tiktoken gives it.
    names_by_id: dict[int, str] = {}
    for name, token_id in definition["special_tokens"].items():
        names_by_id.setdefault(token_id, name)
    ids = sorted(names_by_id)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise RuntimeError("o200k_harmony's special tokens are not one run of ids")
    converter = TikTokenConverter(vocab_file=str(vocab_file), pattern=definition["pat_str"],
                                  extra_special_tokens=[names_by_id[i] for i in ids])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=converter.converted())
    if tokenizer.convert_tokens_to_ids(names_by_id[ids[-1]]) != ids[-1]:
        raise RuntimeError("the special tokens did not get tiktoken's ids")
    tokenizer.save_pretrained(folder)


def converter_input(checkpoint: Path, folder: Path, vocab_file: Path) -> Path:
    """`folder`: symlinks to the checkpoint's files, and a tokenizer written there if the
    checkpoint has none (see the module's doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in checkpoint.iterdir():
        if file.is_file():
            link = folder / file.name
            link.unlink(missing_ok=True)
            link.symlink_to(file.resolve())
    if not (folder / "tokenizer.json").exists():
        write_tokenizer(folder, vocab_file)
    return folder


def convert_command(tree: Path, model_dir: Path, out: Path) -> list[str]:
    # bf16: the checkpoint's dense dtype, so the GGUF holds the same dense bits as the
    # checkpoint (the converter's "auto" could pick f16); the MXFP4 experts stay MXFP4 whatever
    # the outtype (conversion/gpt_oss.py).
    return [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model_dir),
            "--outfile", str(out), "--outtype", "bf16"]


def convert(tree: Path, checkpoint: Path, out: Path, vocab_file: Path) -> Path:
    """Write `out`, the GGUF of `checkpoint`, with `tree`'s own converter."""
    work = out.with_name(out.name + ".input")
    converter_input(checkpoint, work, vocab_file)
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter then imports the gguf-py it vendors
    partial = out.with_name(out.name + ".partial")
    subprocess.run(convert_command(tree, work, partial), check=True, env=env)
    partial.replace(out)  # `out` exists only once complete
    shutil.rmtree(work)
    return out
