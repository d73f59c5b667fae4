//go:build tools

// Package tools pins the etcd server so `go mod tidy` records its dependencies.
package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
