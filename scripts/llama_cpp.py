"""The anchors of the benchmark: build llama.cpp's or ik_llama.cpp's llama-bench, convert a
checkpoint to their GGUF (openharmony.bench.llama_build says how and why).

    python scripts/llama_cpp.py --cache-dir /work/anchors build          # llama.cpp (PyPI sdist)
    python scripts/llama_cpp.py build --ik-tree /work/anchors/ik_llama.cpp  # ik_llama.cpp
    python scripts/llama_cpp.py --cache-dir /work/anchors convert CHECKPOINT OUT.gguf
    python scripts/bench.py CHECKPOINT --gguf OUT.gguf --llama-bench ... --ik-llama-bench ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from openharmony.bench import llama_build


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=Path("bench_cache"),
                   help="where llama.cpp's sdist is downloaded and built (default bench_cache/)")
    commands = p.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build llama-bench (llama.cpp from PyPI's "
                                          "llama-cpp-python sdist, or ik_llama.cpp from a tree)")
    b.add_argument("--version", help="llama-cpp-python version (default: the newest)")
    b.add_argument("--ik-tree", type=Path,
                   help="build ik_llama.cpp's llama-bench in this source tree instead")
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
    try:
        if args.command == "build" and args.ik_tree:
            if not (args.ik_tree / "CMakeLists.txt").is_file():
                p.error(f"--ik-tree {args.ik_tree}: no CMakeLists.txt there")
            print(llama_build.build("ik_llama.cpp", args.ik_tree, args.jobs))
        elif args.command == "build":
            sdist = llama_build.download_sdist(args.cache_dir, args.version)
            print(llama_build.build("llama.cpp", llama_build.source_tree(sdist), args.jobs))
        else:
            tree = llama_build.find_tree(args.cache_dir)
            print(llama_build.convert(tree, args.checkpoint, args.out, args.vocab))
    except (FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"llama_cpp.py: {e}") from None


if __name__ == "__main__":
    main()
