// Command mkimage writes the test images as OCI archives, for
// `flotilla image import` where no registry is reachable (`make images`).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"flotilla/testimages"
)

func main() {
	dir := flag.String("o", "bin", "directory to write the archives to")
	flag.Parse()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	p, err := testimages.Build(context.Background(), *dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s\t%s\n", testimages.ToolboxRef, p)
}
