"""Editors: one file each, registered only by the `_target_` of their YAML in conf/editor/."""
