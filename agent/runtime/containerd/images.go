package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/platforms"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/distribution/reference"

	"flotilla/agent/runtime"
)

// NormalizeRef returns ref as Docker would store it:
// "busybox" → "docker.io/library/busybox:latest".
func NormalizeRef(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("parse image reference: empty")
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	return named.String(), nil
}

// importedName normalises the names an archive carries. Docker archives
// are normalised by containerd already; an OCI archive's ref.name
// annotation may be "busybox:1.36" (normalised here) or a bare tag such
// as "v1", which names no repository and is kept as it is.
func importedName(name string) string {
	if !strings.ContainsAny(name, ":/@") {
		return name
	}
	if n, err := NormalizeRef(name); err == nil {
		return n
	}
	return name
}

// image turns a stored image into the runtime's view; the ID is the
// config digest for this platform.
func (r *Runtime) image(ctx context.Context, c *containerd.Client, img images.Image) (runtime.Image, error) {
	i := containerd.NewImageWithPlatform(c, img, platforms.Default())
	cfg, err := i.Config(ctx)
	if err != nil {
		return runtime.Image{}, fmt.Errorf("read config of image %s: %w", img.Name, mapErr(err))
	}
	size, err := i.Size(ctx)
	if err != nil {
		return runtime.Image{}, fmt.Errorf("size image %s: %w", img.Name, mapErr(err))
	}
	return runtime.Image{Ref: img.Name, ID: cfg.Digest.String(), Size: size}, nil
}

// GetImage returns a local image by (normalised) reference.
func (r *Runtime) GetImage(ctx context.Context, ref string) (runtime.Image, error) {
	name, err := NormalizeRef(ref)
	if err != nil {
		return runtime.Image{}, err
	}
	c, err := r.conn(ctx)
	if err != nil {
		return runtime.Image{}, err
	}
	img, err := c.ImageService().Get(ctx, name)
	if err != nil {
		return runtime.Image{}, fmt.Errorf("get image %s: %w", name, mapErr(err))
	}
	return r.image(ctx, c, img)
}

// ListImages returns every image usable on this platform.
func (r *Runtime) ListImages(ctx context.Context) ([]runtime.Image, error) {
	c, err := r.conn(ctx)
	if err != nil {
		return nil, err
	}
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", mapErr(err))
	}
	out := make([]runtime.Image, 0, len(imgs))
	for _, img := range imgs {
		i, err := r.image(ctx, c, img)
		if err != nil {
			if errors.Is(err, runtime.ErrUnavailable) {
				return nil, err
			}
			// Another platform's image, or content gone: not runnable here.
			r.log.Debug("skipping image", "image", img.Name, "err", err)
			continue
		}
		out = append(out, i)
	}
	return out, nil
}

// ImportImage loads an OCI or Docker archive (this platform's content only)
// and unpacks every image it names.
func (r *Runtime) ImportImage(ctx context.Context, rd io.Reader) ([]runtime.Image, error) {
	c, err := r.conn(ctx)
	if err != nil {
		return nil, err
	}
	imgs, err := c.Import(ctx, rd,
		containerd.WithImageRefTranslator(importedName),
		containerd.WithImportPlatform(platforms.Default()))
	if err != nil {
		return nil, fmt.Errorf("import image archive: %w", mapErr(err))
	}
	if len(imgs) == 0 {
		return nil, errors.New("import image archive: it names no image (no io.containerd.image.name, org.opencontainers.image.ref.name or RepoTags)")
	}
	snap := r.Snapshotter()
	out := make([]runtime.Image, 0, len(imgs))
	for _, img := range imgs {
		i := containerd.NewImageWithPlatform(c, img, platforms.Default())
		if err := i.Unpack(ctx, snap); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", img.Name, mapErr(err))
		}
		ri, err := r.image(ctx, c, img)
		if err != nil {
			return nil, err
		}
		r.log.Info("imported image", "image", ri.Ref, "id", ri.ID)
		out = append(out, ri)
	}
	return out, nil
}

// PullImage fetches ref from its registry (plain HTTP for localhost
// registries, HTTPS otherwise) and unpacks it.
func (r *Runtime) PullImage(ctx context.Context, ref string) (runtime.Image, error) {
	name, err := NormalizeRef(ref)
	if err != nil {
		return runtime.Image{}, err
	}
	c, err := r.conn(ctx)
	if err != nil {
		return runtime.Image{}, err
	}
	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
	})
	img, err := c.Pull(ctx, name,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(r.Snapshotter()),
		containerd.WithPlatformMatcher(platforms.Default()))
	if err != nil {
		if ctx.Err() != nil {
			return runtime.Image{}, fmt.Errorf("pull image %s: %w (%v)", name, ctx.Err(), err)
		}
		return runtime.Image{}, fmt.Errorf("pull image %s: %w", name, mapErr(err))
	}
	ri, err := r.image(ctx, c, img.Metadata())
	if err != nil {
		return runtime.Image{}, err
	}
	r.log.Info("pulled image", "image", ri.Ref, "id", ri.ID)
	return ri, nil
}

// RemoveImage deletes an image; its content and layers go with it unless
// a container still uses them. ErrNotFound if there is no such image.
func (r *Runtime) RemoveImage(ctx context.Context, ref string) error {
	name, err := NormalizeRef(ref)
	if err != nil {
		return err
	}
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	// Synchronous, so the space is free when this returns.
	if err := c.ImageService().Delete(ctx, name, images.SynchronousDelete()); err != nil {
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("remove image %s: %w", name, runtime.ErrNotFound)
		}
		return fmt.Errorf("remove image %s: %w", name, mapErr(err))
	}
	return nil
}

// ensureUnpacked unpacks an image for the snapshotter in use if it is not
// (imported before a snapshotter fallback, or pulled by someone else).
func (r *Runtime) ensureUnpacked(ctx context.Context, img containerd.Image) error {
	snap := r.Snapshotter()
	ok, err := img.IsUnpacked(ctx, snap)
	if err != nil {
		return fmt.Errorf("check image %s is unpacked: %w", img.Name(), mapErr(err))
	}
	if ok {
		return nil
	}
	if err := img.Unpack(ctx, snap); err != nil {
		return fmt.Errorf("unpack image %s: %w", img.Name(), mapErr(err))
	}
	return nil
}
