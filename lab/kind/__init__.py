"""kind clusters with weft: a kind node image assembled here from the Kubernetes lab's
builds (nothing can be pulled), and kind run with its podman provider."""
