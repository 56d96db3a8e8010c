// Package hollow is a hollow node: it joins the gossip pool, registers its
// Node and reports the pods bound to it as Running and Ready without running
// anything. It exists for scale tests and benchmarks only (issue 4's
// "simulated nodes"); every functional test of pods uses the real agent.
//
// It is light on purpose so that thousands fit in one process: one gossip
// member, one pod informer filtered to its node, one worker, and status
// writes only when something changes. It must never grow runtime behaviour
// (probes, restarts, logs): that belongs to package agent.
package hollow
