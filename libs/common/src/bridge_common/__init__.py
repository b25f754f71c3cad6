"""bridge-common: the schema library every Bridge Lite service shares."""

__version__ = "0.1.0"
