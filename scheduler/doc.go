// Package scheduler binds pending pods to nodes: a priority queue with
// back-off, filter and score plugins built as an iterator chain that records
// why each node was rejected, and a binder. It is pure logic over a read-only
// view of nodes and pods plus a binder interface; it never reaches into the
// store or the API server's internals (issue 4 builds it).
package scheduler
