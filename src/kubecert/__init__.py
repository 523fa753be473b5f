"""kubecert: keep the certificates of kubeadm-built Kubernetes clusters alive, offline."""

__version__ = "0.1.0"
