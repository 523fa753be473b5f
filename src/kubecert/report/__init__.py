"""Renderers: data in (a NodeReport), text out. Table (kubeadm's layout), JSON, YAML."""
