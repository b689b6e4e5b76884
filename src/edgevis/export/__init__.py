"""Export: torch stages -> ONNX graphs (two flavors) carrying their IOSpec."""

from edgevis.export.onnx_export import ExportError, ExportReport, export_stage

__all__ = ["ExportError", "ExportReport", "export_stage"]
