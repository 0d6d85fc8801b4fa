"""Framework-neutral graph IR (imports neither onnx nor torch)."""

from irprune.ir.graph import Dim, Graph, Node, Opaque, Shape, Value

__all__ = ["Dim", "Graph", "Node", "Opaque", "Shape", "Value"]
