// Package runtime declares what the agent needs from a container runtime
// (Runtime) and the labels that let a restarted agent find its containers.
// The containerd implementation lives in agent/runtime/containerd.
//
// A pod has no sandbox container here: its network namespace is a file the
// agent makes (package agent/network) and every container of the pod joins
// it, so no pause image is needed, which matters on machines that reach no
// registry.
package runtime
