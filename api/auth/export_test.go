package auth

import "context"

// WaitRBAC blocks until the RBAC cache reflects store revision rev.
func (a *Auth) WaitRBAC(ctx context.Context, rev uint64) error { return a.rbac.sync.wait(ctx, rev) }

// WaitPods blocks until the pod index reflects store revision rev.
func (a *Auth) WaitPods(ctx context.Context, rev uint64) error { return a.pods.sync.wait(ctx, rev) }
