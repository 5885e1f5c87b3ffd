"""hetagent on Kubernetes: CustomResourceDefinitions (`crds`), manifests for a KubeRay cluster and
the control plane (`render`), the `hetagent k8s` commands (`cli`) and the AgentRun operator."""
