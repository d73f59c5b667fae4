//go:build tools

// Package peer pins ACK's IAM controller (the benchmark's peer) so that `go build` of its
// command resolves every dependency from this module's go.mod and go.sum.
package peer

import _ "github.com/aws-controllers-k8s/iam-controller/cmd/controller"
