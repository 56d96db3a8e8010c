//go:build tools

// Package tools pins the direct dependencies tested together on this machine
// (../shared/deps/go.mod.tested) so `go mod tidy` keeps their versions while
// the packages that use them are still being written.
package tools

import (
	_ "github.com/anishathalye/porcupine"
	_ "github.com/containerd/containerd"
	_ "github.com/containernetworking/cni/libcni"
	_ "github.com/gorilla/mux"
	_ "github.com/hashicorp/memberlist"
	_ "github.com/hashicorp/raft"
	_ "github.com/hashicorp/raft-boltdb/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/apimachinery/pkg/apis/meta/v1"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/cri-streaming/pkg/streaming"
	_ "k8s.io/kubectl/pkg/cmd"
)
