// Package testimages builds the container images Flotilla's tests run,
// from the repo's own programs, with Go code alone.
//
// Why: tests run on machines with no image registry and no Docker, yet
// the agent must pull, import and run real images on real containerd. So
// the images are made here: a small static Go program (toolbox/, one
// multi-call binary that serves HTTP, exits with a code, sleeps, allocates
// memory, ...) is compiled with CGO_ENABLED=0 and packed into an OCI image
// layout archive that `ctr images import`, containerd's client.Import and
// `flotilla image import` all load. The archive also carries a Docker
// style manifest.json with RepoTags, as `ctr images export` writes, so
// importers that only know that format find the name too.
//
// The compile goes through Go's build cache, so building again is cheap;
// the archive is written with fixed timestamps, so the same binary gives
// the same image digest.
//
// This package is for tests and benchmarks; the flotilla binary does not
// depend on it.
package testimages
