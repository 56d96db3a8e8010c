package auth

import (
	"context"
	"slices"
)

// Identity constants. Their values are fixed by the security contract;
// internal/pki exports the same names and the lead may switch to those.
const (
	orgServers       = "flotilla:servers"
	groupMasters     = "system:masters"
	orgNodes         = "system:nodes"
	nodeUserPrefix   = "system:node:"
	serverUserPrefix = "flotilla:server:"
	adminUser        = "flotilla:admin"
	saUserPrefix     = "system:serviceaccount:"
	groupSAs         = "system:serviceaccounts"
)

// Users and groups every Kubernetes authorizer knows.
const (
	// UserAnonymous is who a request without credentials is.
	UserAnonymous = "system:anonymous"
	// GroupUnauthenticated is the only group of UserAnonymous.
	GroupUnauthenticated = "system:unauthenticated"
	// GroupAuthenticated is given to every authenticated user.
	GroupAuthenticated = "system:authenticated"
)

// DefaultAudience is the audience a ServiceAccount token must carry to be
// accepted by the API (kube-apiserver's default: its issuer).
const DefaultAudience = "https://kubernetes.default.svc.cluster.local"

// User is an authenticated identity. Users handed out by this package are
// shared between requests and must not be modified.
type User struct {
	Name   string
	UID    string
	Groups []string
}

// InGroup reports whether u is a member of group.
func (u *User) InGroup(group string) bool {
	return u != nil && slices.Contains(u.Groups, group)
}

var anonymous = &User{Name: UserAnonymous, Groups: []string{GroupUnauthenticated}}

type userKey struct{}

// WithUser returns ctx carrying u.
func WithUser(ctx context.Context, u *User) context.Context {
	return context.WithValue(ctx, userKey{}, u)
}

// UserFrom returns the user Middleware put in ctx.
func UserFrom(ctx context.Context) (*User, bool) {
	u, ok := ctx.Value(userKey{}).(*User)
	return u, ok && u != nil
}

// ServiceAccountUserName is the user name of a ServiceAccount.
func ServiceAccountUserName(namespace, name string) string {
	return saUserPrefix + namespace + ":" + name
}
