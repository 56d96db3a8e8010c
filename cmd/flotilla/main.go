// Command flotilla is the one binary of a Flotilla cluster: masters
// (`flotilla server`), nodes (`flotilla agent`), and the operator tools.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes one command line and returns the process exit code. SIGINT and
// SIGTERM cancel the context so servers shut down gracefully.
func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		// cobra already printed usage errors; print ours once, plainly.
		root.PrintErrln("flotilla:", err)
		return 1
	}
	return 0
}
