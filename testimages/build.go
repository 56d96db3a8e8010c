package testimages

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ToolboxRef is the name the toolbox image is imported under.
const ToolboxRef = "flotilla.test/toolbox:v1"

// toolboxTag is ToolboxRef's tag, the OCI ref.name annotation.
const toolboxTag = "v1"

// annotationImageName is the index annotation containerd's importer names
// an image by (images.AnnotationImageName; spelled out to keep the
// containerd client out of this package).
const annotationImageName = "io.containerd.image.name"

// epoch is every timestamp in the image, so equal binaries give equal
// digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrBuild is returned when the toolbox cannot be compiled or packed.
var ErrBuild = errors.New("build test image")

// Build compiles ./testimages/toolbox statically (CGO_ENABLED=0, with the
// go command of runtime.GOROOT(), -trimpath, -ldflags "-s -w") and writes
// the toolbox image to dir/toolbox.tar, returning its path. The compile is
// cached by Go's build cache, so a second call is fast. Concurrent calls
// with the same dir are safe: the archive is replaced atomically.
func Build(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin, err := os.CreateTemp(dir, "toolbox-*.bin")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBuild, err)
	}
	bin.Close()
	defer os.Remove(bin.Name())

	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-ldflags=-s -w", "-o", bin.Name(), "./testimages/toolbox")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: go build ./testimages/toolbox: %w\n%s", ErrBuild, err, out)
	}
	exe, err := os.ReadFile(bin.Name())
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBuild, err)
	}
	archive, err := toolboxArchive(exe)
	if err != nil {
		return "", err
	}
	return writeAtomic(filepath.Join(dir, "toolbox.tar"), archive)
}

// moduleRoot finds the directory holding go.mod: from this source file
// when the build kept its path, else upwards from the working directory.
func moduleRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "testimages", "toolbox", "main.go")); err == nil {
				if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
					return d, nil
				}
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("%w: cannot find the flotilla source tree (testimages/toolbox) from %q", ErrBuild, starts)
}

func writeAtomic(path string, data []byte) (string, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".toolbox-*.tar")
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBuild, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return "", fmt.Errorf("%w: write %s: %w", ErrBuild, tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("%w: write %s: %w", ErrBuild, tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBuild, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBuild, err)
	}
	return path, nil
}

// toolboxArchive packs the toolbox binary into the image archive.
func toolboxArchive(exe []byte) ([]byte, error) {
	layer, diffID, err := toolboxLayer(exe)
	if err != nil {
		return nil, err
	}
	config := ocispec.Image{
		Created:  &epoch,
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: ocispec.ImageConfig{
			Entrypoint:   []string{"/toolbox"},
			Cmd:          []string{"serve"},
			Env:          []string{"PATH=/"},
			WorkingDir:   "/",
			ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		},
		RootFS:  ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		History: []ocispec.History{{Created: &epoch, CreatedBy: "flotilla testimages.Build"}},
	}
	return imageArchive(ToolboxRef, toolboxTag, config, layer)
}

// imageArchive writes an OCI image layout tar of one single-layer image,
// named ref in index.json's annotations and in a Docker manifest.json.
func imageArchive(ref, tag string, config ocispec.Image, layer []byte) ([]byte, error) {
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("%w: encode config: %w", ErrBuild, err)
	}
	configDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageConfig,
		Digest:    digest.FromBytes(configJSON),
		Size:      int64(len(configJSON)),
	}
	layerDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    digest.FromBytes(layer),
		Size:      int64(len(layer)),
	}
	manifestJSON, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: encode manifest: %w", ErrBuild, err)
	}
	platform := config.Platform
	indexJSON, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{
			MediaType: ocispec.MediaTypeImageManifest,
			Digest:    digest.FromBytes(manifestJSON),
			Size:      int64(len(manifestJSON)),
			Platform:  &platform,
			Annotations: map[string]string{
				annotationImageName:       ref,
				ocispec.AnnotationRefName: tag,
			},
		}},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: encode index: %w", ErrBuild, err)
	}
	layoutJSON, err := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err != nil {
		return nil, fmt.Errorf("%w: encode layout: %w", ErrBuild, err)
	}
	blob := func(b []byte) string { return "blobs/sha256/" + digest.FromBytes(b).Encoded() }
	// What `docker save` and `ctr images export` write beside the OCI
	// layout; importers that read only this still learn the name.
	dockerJSON, err := json.Marshal([]struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{Config: blob(configJSON), RepoTags: []string{ref}, Layers: []string{blob(layer)}}})
	if err != nil {
		return nil, fmt.Errorf("%w: encode manifest.json: %w", ErrBuild, err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []tarEntry{
		{name: "blobs/", dir: true, mode: 0o755},
		{name: "blobs/sha256/", dir: true, mode: 0o755},
		{name: blob(layer), data: layer, mode: 0o644},
		{name: blob(configJSON), data: configJSON, mode: 0o644},
		{name: blob(manifestJSON), data: manifestJSON, mode: 0o644},
		{name: ocispec.ImageLayoutFile, data: layoutJSON, mode: 0o644},
		{name: "index.json", data: indexJSON, mode: 0o644},
		{name: "manifest.json", data: dockerJSON, mode: 0o644},
	}
	if err := writeTar(tw, entries); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// toolboxLayer is the image's only layer, gzipped, and its diff ID (the
// digest of the uncompressed tar).
func toolboxLayer(exe []byte) ([]byte, digest.Digest, error) {
	passwd := "root:x:0:0:root:/:/toolbox\nnobody:x:65534:65534:nobody:/nonexistent:/toolbox\n"
	group := "root:x:0:\nnobody:x:65534:\n"
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	// Empty mount points exist so runc needs not create them in a
	// read-only root; /tmp is world-writable and sticky, as usual.
	err := writeTar(tw, []tarEntry{
		{name: "data/", dir: true, mode: 0o755},
		{name: "dev/", dir: true, mode: 0o755},
		{name: "etc/", dir: true, mode: 0o755},
		{name: "etc/group", data: []byte(group), mode: 0o644},
		{name: "etc/passwd", data: []byte(passwd), mode: 0o644},
		{name: "proc/", dir: true, mode: 0o555},
		{name: "sys/", dir: true, mode: 0o555},
		{name: "tmp/", dir: true, mode: 0o1777},
		{name: "toolbox", data: exe, mode: 0o755},
	})
	if err != nil {
		return nil, "", err
	}
	diffID := digest.FromBytes(raw.Bytes())
	var gz bytes.Buffer
	// No name or time in the header: reproducible. BestSpeed because tests
	// run with -race, which makes deflate ten times slower; size matters
	// little for an archive that never crosses a network.
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if err != nil {
		return nil, "", fmt.Errorf("%w: compress layer: %w", ErrBuild, err)
	}
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", fmt.Errorf("%w: compress layer: %w", ErrBuild, err)
	}
	if err := zw.Close(); err != nil {
		return nil, "", fmt.Errorf("%w: compress layer: %w", ErrBuild, err)
	}
	return gz.Bytes(), diffID, nil
}

type tarEntry struct {
	name string
	dir  bool
	mode int64
	data []byte
}

// writeTar writes entries owned by root with fixed times, then closes tw.
func writeTar(tw *tar.Writer, entries []tarEntry) error {
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			ModTime: epoch,
			Uname:   "root",
			Gname:   "root",
			Format:  tar.FormatPAX,
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%w: tar %s: %w", ErrBuild, e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("%w: tar %s: %w", ErrBuild, e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("%w: close tar: %w", ErrBuild, err)
	}
	return nil
}

// forTest is the archive ForTest built, once per process.
var forTest struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// ForTest returns the toolbox archive for a test, building it on the first
// call of the test binary into a temp dir that Cleanup removes (a
// TestMain calls it after m.Run).
func ForTest(t testing.TB) string {
	t.Helper()
	forTest.once.Do(func() {
		if forTest.dir, forTest.err = os.MkdirTemp("", "flotilla-toolbox-"); forTest.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		forTest.path, forTest.err = Build(ctx, forTest.dir)
	})
	if forTest.err != nil {
		t.Fatalf("build the toolbox image: %v", forTest.err)
	}
	return forTest.path
}

// Cleanup removes what ForTest built.
func Cleanup() {
	if forTest.dir != "" {
		os.RemoveAll(forTest.dir)
	}
}
