"""A benchmark's figures as a table and ratio lines, with each decode run's achieved read
bandwidth beside the machine's.

A decode step cannot read fewer bytes than `traffic.StepBytes` counts, so bytes/step x tok/s is
a floor on what the engine read per second. An anchor below half of the machine's bandwidth is
not running as its users see it (the page cache thrashing, another process on the cores), and
a ratio against it would flatter us: such a run is flagged SUSPECT (crippled anchor), and its
ratios are printed as SUSPECT, never as a clean figure.
"""

from __future__ import annotations

from .llama_bench import ANCHORS
from .traffic import StepBytes

SUSPECT_BELOW = 0.5  # of the machine's read bandwidth
ANCHOR_KV = "f16"  # llama.cpp's and ik_llama.cpp's default cache type


def _kv(m: dict) -> str:
    return ANCHOR_KV if m["engine"] in ANCHORS else m.get("kv", "float")


def annotate(result: dict, step_bytes: StepBytes) -> list[dict]:
    """The measurements, each decode one with its step's bytes, achieved bandwidth, its share
    of the machine's, and whether it is suspect."""
    machine = result["bandwidth_bytes_s"]
    annotated = []
    for m in result["measurements"]:
        m = dict(m)
        if m["kind"] == "decode":
            m["step_bytes"] = step_bytes.total(m["depth"], _kv(m))
            m["read_bytes_s"] = m["step_bytes"] * m["tok_s"]
            m["machine_share"] = m["read_bytes_s"] / machine
            m["suspect"] = m["machine_share"] < SUSPECT_BELOW
        annotated.append(m)
    return annotated


def _what(m: dict) -> str:
    return f"prefill {m['tokens']}" if m["kind"] == "prefill" else f"decode d{m['depth']}"


def _order(m: dict) -> tuple:
    return (m["engine"], _kv(m), m["kind"] == "decode", m["tokens"], m["depth"])


def _name(m: dict) -> str:
    kv = _kv(m)
    return m["engine"] if m["engine"] in ANCHORS or kv == "float" else f"{m['engine']}[kv {kv}]"


def table(result: dict, measurements: list[dict]) -> str:
    gb = 1e9
    lines = [f"CPU: {result['cpu']}, {result['threads']} threads; machine read bandwidth "
             f"{result['bandwidth_bytes_s'] / gb:.1f} GB/s; load average before "
             f"{result['load_average']['before']}, after {result['load_average']['after']}", "",
             "| engine | test | tok/s | bytes/step GB | read GB/s | of machine | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in sorted(measurements, key=_order):
        if m["kind"] == "decode":
            flag = " SUSPECT" if m["suspect"] else ""
            read = (f"{m['step_bytes'] / gb:.2f} | {m['read_bytes_s'] / gb:.1f} "
                    f"| {m['machine_share']:.0%}{flag}")
        else:
            read = "- | - | -"
        lines.append(f"| {_name(m)} | {_what(m)} | {m['tok_s']:.2f} | {read} "
                     f"| {m['peak_rss_bytes'] / gb:.2f} |")
    return "\n".join(lines)


def ratio_lines(measurements: list[dict]) -> list[str]:
    """`ratio <what>: openharmony/<anchor> = 0.41x` for every test both ran; SUSPECT instead
    of a clean ratio where the anchor's decode at that depth (for prefill: at depth 0) read
    under half of the machine's bandwidth."""
    ours = sorted((m for m in measurements if m["engine"] == "openharmony"), key=_order)
    lines = []
    for anchor in ANCHORS:
        theirs = {(m["kind"], m["tokens"] if m["kind"] == "prefill" else m["depth"]): m
                  for m in measurements if m["engine"] == anchor}
        if not theirs:
            continue
        depth0 = theirs.get(("decode", 0))
        for m in ours:
            key = (m["kind"], m["tokens"] if m["kind"] == "prefill" else m["depth"])
            other = theirs.get(key)
            if other is None:
                continue
            ours_name = _name(m)
            value = m["tok_s"] / other["tok_s"]
            line = f"ratio {_what(m)}: {ours_name}/{anchor} = {value:.2f}x"
            witness = other if m["kind"] == "decode" else depth0
            if witness is not None and witness["suspect"]:
                line = (f"ratio {_what(m)}: {ours_name}/{anchor} = SUSPECT (crippled anchor: "
                        f"{anchor} read {witness['read_bytes_s'] / 1e9:.1f} GB/s at decode "
                        f"d{witness['depth']}, {witness['machine_share']:.0%} of the machine's; "
                        f"unclean {value:.2f}x)")
            elif witness is None:
                line += f" (unchecked: no decode d0 of {anchor})"
            lines.append(line)
    return lines
