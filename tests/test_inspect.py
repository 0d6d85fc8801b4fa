"""``irprune inspect --dot``: the channel-group graph as valid Graphviz DOT.

No DOT library is a dependency (networkx reads DOT only through pydot), so the output is parsed
here by a small reader that follows Graphviz's own lexing of quoted strings (the only escape is
``\\"``; label text then reads ``\\\\`` and ``\\n``): a name that breaks the quoting breaks the
parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from irprune.inspect import inspect_model, to_dot
from tests.helpers import make_model

HOSTILE = 'evil "quoted" \\ back}slash; -> g0 [x=1]\nnext line <script>\\'


# --- a strict reader for the subset of DOT irprune writes -------------------------------------


@dataclass
class Dot:
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


_TOKEN = re.compile(r'\s*(?:(->)|([{}\[\];,=])|([A-Za-z_][A-Za-z_0-9]*|-?\d+(?:\.\d+)?)|("))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while text[pos:].strip():
        m = _TOKEN.match(text, pos)
        assert m, f"DOT syntax error at {text[pos : pos + 30]!r}"
        pos = m.end()
        if m.group(4):  # quoted string, lexed like Graphviz: only \" is an escape
            chars = []
            while text[pos] != '"':
                if text[pos] == "\\" and text[pos + 1] == '"':
                    chars.append('"')
                    pos += 2
                else:
                    chars.append(text[pos])
                    pos += 1
            pos += 1
            out.append(("id", "".join(chars)))
        else:
            kind = "->" if m.group(1) else "punct" if m.group(2) else "id"
            out.append((kind, m.group(1) or m.group(2) or m.group(3)))
    return out


def parse_dot(text: str) -> Dot:
    toks = _tokens(text)
    assert [t[1] for t in toks[:3]] == ["digraph", "channel_groups", "{"] and toks[-1][1] == "}"
    dot, i = Dot(), 3

    def attrs(i: int) -> tuple[dict[str, str], int]:
        found: dict[str, str] = {}
        if toks[i][1] != "[":
            return found, i
        i += 1
        while toks[i][1] != "]":
            key, eq, value = toks[i : i + 3]
            assert key[0] == "id" and eq[1] == "=" and value[0] == "id", toks[i : i + 3]
            found[key[1]] = value[1]
            i += 3
            if toks[i][1] == ",":
                i += 1
        return found, i + 1

    while i < len(toks) - 1:
        kind, name = toks[i]
        assert kind == "id", toks[i]
        if toks[i + 1][1] == "=":  # graph attribute
            i += 3
        elif toks[i + 1][0] == "->":
            assert toks[i + 2][0] == "id"
            head = toks[i + 2][1]
            found, i = attrs(i + 3)
            dot.edges.append((name, head, found))
        else:
            found, i = attrs(i + 1)
            if name not in ("node", "edge"):
                assert name not in dot.nodes, f"node {name} twice"
                dot.nodes[name] = found
        assert toks[i][1] == ";", toks[i]
        i += 1
    for a, b, _ in dot.edges:
        assert a in dot.nodes and b in dot.nodes, (a, b)
    return dot


def label_text(label: str) -> str:
    """Graphviz label escapes: \\\\ is a backslash, \\n \\l \\r end a line."""
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) in "nlr" else m.group(1), label)


# --- a model whose group graph is known -------------------------------------------------------


def _conv(name: str, x: str, y: str, cin: int, cout: int, inits: dict[str, np.ndarray]) -> list:
    rng = np.random.default_rng(len(inits))
    inits[f"{name}.w"] = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    return [helper.make_node("Conv", [x, f"{name}.w"], [y], name=name, pads=[1, 1, 1, 1])]


def branchy_model(first_name: str = "a") -> onnx.ModelProto:
    """input -> a(8) -> relu -> {b(8), c(8)} -> add -> {d(6), e(4)} -> concat -> f(5) -> output.

    Groups by source: {a}, {b, c} (they meet at the Add), {d}, {e}, {f} (frozen: graph output).
    """
    inits: dict[str, np.ndarray] = {}
    nodes = _conv(first_name, "x", "a", 3, 8, inits)
    nodes.append(helper.make_node("Relu", ["a"], ["ar"], name="relu"))
    nodes += _conv("b", "ar", "bo", 8, 8, inits) + _conv("c", "ar", "co", 8, 8, inits)
    nodes.append(helper.make_node("Add", ["bo", "co"], ["s"], name="add"))
    nodes += _conv("d", "s", "do", 8, 6, inits) + _conv("e", "s", "eo", 8, 4, inits)
    nodes.append(helper.make_node("Concat", ["do", "eo"], ["cat"], name="concat", axis=1))
    nodes += _conv("f", "cat", "y", 10, 5, inits)
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 5, 8, 8])], inits)


def _by_source(info: dict) -> dict[str, int]:
    return {s: g["id"] for g in info["groups"] for s in g["sources"]}


def test_dot_has_one_node_per_group_and_an_edge_per_op_between_groups(tmp_path: Path) -> None:
    onnx.save(branchy_model(), str(tmp_path / "m.onnx"))
    info = inspect_model(tmp_path / "m.onnx")
    dot = parse_dot(to_dot(info))
    assert set(dot.nodes) == {f"g{g['id']}" for g in info["groups"]}
    g = {k: f"g{v}" for k, v in _by_source(info).items()}
    assert g["b"] == g["c"]  # the Add couples them
    # Conv a -> b/c, Conv b/c -> d and -> e, Conv d (and e, through the Concat) -> f
    edges = {(a, b, e["label"]) for a, b, e in dot.edges}
    assert edges == {
        (g["a"], g["b"], "Conv"),
        (g["b"], g["d"], "Conv"),
        (g["b"], g["e"], "Conv"),
        (g["d"], g["f"], "Conv"),
        (g["e"], g["f"], "Conv"),
    }
    for group in info["groups"]:
        label = label_text(dot.nodes[f"g{group['id']}"]["label"]).splitlines()
        assert label[0] == f"group {group['id']}" and label[1].startswith(f"{group['size']} ch")
        state = "frozen: " + group["frozen"][0] if group["frozen"] else "prunable"
        assert label[2] == state
    assert info["groups"][_by_source(info)["f"]]["frozen"]


def test_hostile_node_names_stay_inside_their_label(tmp_path: Path) -> None:
    onnx.save(branchy_model(first_name=HOSTILE), str(tmp_path / "m.onnx"))
    info = inspect_model(tmp_path / "m.onnx")
    text = to_dot(info)
    dot = parse_dot(text)
    assert len(dot.nodes) == len(info["groups"]) and len(dot.edges) == 5
    gid = _by_source(info)[HOSTILE]
    label = label_text(dot.nodes[f"g{gid}"]["label"])
    # the whole name is the label's last line(s); a final backslash gets a space after it
    assert label.endswith("\nprunable\n" + HOSTILE + " ")


def test_cli_dot_to_stdout_and_to_a_file(
    tmp_path: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    onnx.save(branchy_model(), str(tmp_path / "m.onnx"))
    code, out, err = cli("inspect", tmp_path / "m.onnx", "--dot")
    assert code == 0 and err == ""
    assert len(parse_dot(out).edges) == 5
    code, out2, err = cli("inspect", tmp_path / "m.onnx", "--dot", tmp_path / "g.dot")
    assert code == 0 and err == "" and out2 == f"wrote {tmp_path / 'g.dot'}\n"
    assert (tmp_path / "g.dot").read_text() == out
    code, _, err = cli("inspect", tmp_path / "m.onnx", "--dot", tmp_path / "no" / "g.dot")
    assert code == 2 and err.startswith("irprune: error:") and "does not exist" in err
    code, _, err = cli("inspect", tmp_path / "m.onnx", "--dot", "--json")
    assert code == 2 and "not allowed with" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot", "m.onnx"]


def test_compute_inside_if_branches_is_stated(tmp_path: Path) -> None:
    from tests.test_inputs import _rate_model

    path = tmp_path / "rate.onnx"
    onnx.save(_rate_model(conv_in_main=False), str(path))
    info = inspect_model(path, {"x": (1, 3, 8, 8)})
    assert info["macs"] == 0
    assert list(info["subgraph_macs"].values()) == [{"Conv": 2}]
    assert re.search(r"not analysed or counted: 2 Conv inside the subgraphs of \S+", info["text"])
