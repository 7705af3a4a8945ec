"""llama.cpp as a compared system: build it, convert a checkpoint to GGUF, run llama-bench.

    .venv/bin/python scripts/llama_cpp.py build                 # fetch the sdist, build llama-bench
    .venv/bin/python scripts/llama_cpp.py convert CHECKPOINT OUT.gguf
    .venv/bin/python scripts/bench.py --llama-cpp OUT.gguf ...  # compare (docs/benchmarks.md)

Nothing of llama.cpp is in this repository. `build` takes the llama.cpp tree that PyPI's
llama-cpp-python sdist vendors (`pip download --no-binary llama-cpp-python --no-deps llama-cpp-python`,
the newest release unless --version says otherwise) into the cache folder (default
bench_cache/, git-ignored), and builds `llama-bench` there with the system cmake and C++
compiler: CPU only, tuned for this machine's ISA (GGML_NATIVE), no network code, `nice -n 10`,
`-j2`. `convert` runs that tree's own `convert_hf_to_gguf.py` with its vendored gguf-py, which
keeps gpt-oss's MXFP4 experts as MXFP4.

A random checkpoint has no tokenizer files, and the converter needs one (it writes the
vocabulary into the GGUF and hashes the pre-tokenizer). `convert` puts a copy of the checkpoint
folder made of symlinks (config.json, the shards and their index) next to the output, plus a
`tokenizer.json` and `tokenizer_config.json` built from the exact o200k_base ranks
(OPENHARMONY_VOCAB, the file that openharmony itself reads) with transformers' tiktoken
converter and gpt-oss's special tokens: the vocabulary of the real model, so the GGUF is what
the converter makes of gpt-oss itself. The weights are random, so no benchmark depends on it.

llama-bench's JSON output is parsed here too (`parse_bench_json`); scripts/bench.py calls
`bench_command` and `run_bench` for its llama.cpp configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "bench_cache"
PACKAGE = "llama-cpp-python"
# The cmake options of a CPU-only build of llama-bench for this machine, and why:
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",           # -march=native: the ISA of this machine (AVX-512 here)
    "-DBUILD_SHARED_LIBS=OFF",    # one self-contained binary, nothing to put on a library path
    "-DLLAMA_OPENSSL=OFF",        # no network code: the model is a local file
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
TARGETS = ("llama-bench",)


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


def build(tree: Path, jobs: int = 2) -> Path:
    """Build llama-bench in `tree`/build; its path."""
    build_dir = tree / "build"
    nice = ["nice", "-n", "10"]
    subprocess.run([*nice, "cmake", "-S", str(tree), "-B", str(build_dir), *CMAKE_OPTIONS],
                   check=True)
    subprocess.run([*nice, "cmake", "--build", str(build_dir), "--target", *TARGETS,
                    f"-j{jobs}"], check=True)
    return bench_binary(tree)


def bench_binary(tree: Path) -> Path:
    return tree / "build" / "bin" / "llama-bench"


def find_tree(cache_dir: Path) -> Path:
    """The extracted llama.cpp tree in `cache_dir` (the newest, if several)."""
    trees = sorted((cache_dir / "llama_cpp").glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not trees:
        raise SystemExit(f"no llama.cpp tree in {cache_dir}/llama_cpp: run "
                         f"`scripts/llama_cpp.py build` first")
    return trees[-1]


# -- convert ------------------------------------------------------------------------------


def write_tokenizer(folder: Path, vocab_file: Path) -> None:
    """tokenizer.json and tokenizer_config.json of o200k_harmony in `folder`: the BPE of
    `vocab_file` (o200k_base.tiktoken) with tiktoken's pattern and special tokens, through
    transformers' own tiktoken converter."""
    from openharmony.tokenizer import o200k_harmony_definition
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


# -- llama-bench --------------------------------------------------------------------------


def bench_command(binary: Path, gguf: Path, *, threads: int, prompt_tokens: list[int],
                  decode_tokens: int, repack: bool, repetitions: int = 1) -> list[str]:
    """One llama-bench process: prefill each of `prompt_tokens` from an empty context, then
    decode `decode_tokens` from an empty context, `repetitions` times each after a warm-up,
    with the CPU-repacked weights (llama.cpp's default) or the weights used in place from the
    mmap (`--repack 0`)."""
    return [str(binary), "-m", str(gguf), "-t", str(threads),
            "-p", ",".join(str(n) for n in prompt_tokens), "-n", str(decode_tokens),
            "--repack", "1" if repack else "0", "-r", str(repetitions),
            "-o", "json", "--progress"]


def parse_bench_json(text: str) -> dict:
    """llama-bench's JSON output as our figures: tokens/s of each prefill length and of
    decode (the mean over its repetitions), and what it ran."""
    tests = json.loads(text)
    prefill, decode = {}, None
    for test in tests:
        if test["n_depth"] != 0:
            raise ValueError("a test at a depth other than 0 is not one we run")
        if test["n_prompt"] and not test["n_gen"]:
            prefill[test["n_prompt"]] = test["avg_ts"]
        elif test["n_gen"] and not test["n_prompt"]:
            if decode is not None:
                raise ValueError("more than one decode test")
            decode = {"tokens": test["n_gen"], "tok_s": test["avg_ts"]}
        else:
            raise ValueError(f"a combined prompt+generation test: {test['n_prompt']}, "
                             f"{test['n_gen']}")
    first = tests[0]
    return {
        "prefill_tok_s_at": prefill,
        "decode_tok_s": decode["tok_s"] if decode else None,
        "decode_tokens": decode["tokens"] if decode else 0,
        "repack": {bool(t["repack"]) for t in tests} == {True},
        "threads": first["n_threads"],
        "build_commit": first["build_commit"], "build_number": first["build_number"],
        "cpu_info": first["cpu_info"], "model_type": first["model_type"],
        "model_size": first["model_size"], "type_k": first["type_k"],
    }


# The first line llama-bench writes with --progress after the model is loaded and a context
# made: until then is our load time.
LOADED_MARK = "warmup prompt run"


def run_bench(command: list[str]) -> dict:
    """Run llama-bench; its parsed figures, its load seconds (from the start of the process
    until it begins the first warm-up) and its peak resident memory (VmHWM, from wait4)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    load_s, errors = None, []

    def read_stderr():
        nonlocal load_s
        for line in process.stderr:
            if load_s is None and LOADED_MARK in line:
                load_s = time.perf_counter() - start
            errors.append(line)

    reader = threading.Thread(target=read_stderr)
    reader.start()
    out = process.stdout.read()
    reader.join()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"llama-bench failed with exit status {process.returncode}:\n"
                           + "".join(errors)[-3000:])
    return {**parse_bench_json(out), "load_s": load_s,
            "vm_hwm_bytes": usage.ru_maxrss * 1024, "raw_json": json.loads(out)}


# -- command line -------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help="where the sdist is downloaded and built (default bench_cache/)")
    commands = p.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="fetch llama-cpp-python's sdist, build llama-bench")
    b.add_argument("--version", help="llama-cpp-python version (default: the newest)")
    b.add_argument("-j", "--jobs", type=int, default=2)
    c = commands.add_parser("convert", help="a checkpoint folder to GGUF")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--vocab", type=Path,
                   default=Path(os.environ.get("OPENHARMONY_VOCAB",
                                               "/work/shared/vocab/o200k_base.tiktoken")),
                   help="o200k_base.tiktoken, for the tokenizer the converter needs "
                        "(default $OPENHARMONY_VOCAB)")
    args = p.parse_args(argv)
    if args.command == "build":
        tree = source_tree(download_sdist(args.cache_dir, args.version))
        print(build(tree, args.jobs))
    else:
        print(convert(find_tree(args.cache_dir), args.checkpoint, args.out, args.vocab))


if __name__ == "__main__":
    main()
