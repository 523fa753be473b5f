"""PyInstaller's entry script for the single file: what the `kubecert` console script runs."""

from kubecert.cli import main

main()
