#!/usr/bin/env python3
"""Summarizes a client run: what the client sent (from the recording proxy's
requests.jsonl) and what it showed (answers.json).

Usage: summary.py requests.jsonl answers.json
"""
import json
import sys


def main():
    requests = [json.loads(line) for line in open(sys.argv[1])]
    shown = json.load(open(sys.argv[2]))
    print(f"{len(requests)} requests from the client:")
    for r in requests:
        b = r["body"] if isinstance(r["body"], dict) else {}
        tools = b.get("tools") or []
        roles = [m.get("role") for m in b.get("messages", [])]
        calls = sum(len(m.get("tool_calls") or []) for m in b.get("messages", []))
        inputs = b.get("input")
        detail = []
        if tools:
            detail.append(f"{len(tools)} tools ({len(json.dumps(tools)):,} bytes)")
        if "stream" in b:
            detail.append(f"stream={b['stream']}")
        if roles:
            detail.append("roles=" + ",".join(roles))
        if calls:
            detail.append(f"{calls} assistant tool_calls in history")
        if isinstance(inputs, list):
            detail.append(f"{len(inputs)} inputs")
        print(f"  {r['method']} {r['path']} -> {r['status']}  {r['bytes']:,} B  " + "; ".join(detail))
    print("answers shown:")
    for a in shown.get("answers", []):
        print("  ---\n  " + a.replace("\n", "\n  ")[:1200])
    print("page errors:", shown.get("errors") or "none")
    bad = [r for r in requests if r["status"] >= 400]
    print(f"refused or failed: {len(bad)}")
    sys.exit(1 if bad or shown.get("errors") else 0)


if __name__ == "__main__":
    main()
