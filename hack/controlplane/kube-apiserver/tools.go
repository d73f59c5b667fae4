//go:build tools

// Package tools pins kube-apiserver and kube-controller-manager (both from k8s.io/kubernetes) so
// `go mod tidy` records their dependencies.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
