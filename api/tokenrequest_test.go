package api_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/internal/satoken"
)

// newKeyedServer is an API server that signs ServiceAccount tokens.
func newKeyedServer(t *testing.T) (*apitest.Server, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) { c.ServiceAccountKey = key }})
	return s, key
}

func TestTokenRequest(t *testing.T) {
	s, key := newKeyedServer(t)
	ctx := ctxT(t)
	sas := s.Client.CoreV1().ServiceAccounts("default")
	builder, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "builder"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newPod("runner", nil)
	p.Spec.ServiceAccountName = "builder"
	pod, err := s.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	podRef := func(name string, uid types.UID) *authenticationv1.BoundObjectReference {
		return &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: name, UID: uid}
	}
	secs := func(n int64) *int64 { return &n }

	t.Run("bound to the pod", func(t *testing.T) {
		before := time.Now().Truncate(time.Second)
		out, err := sas.CreateToken(ctx, "builder", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: secs(3607), BoundObjectRef: podRef(pod.Name, pod.UID),
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := satoken.Verify(&key.PublicKey, out.Status.Token, time.Now())
		if err != nil {
			t.Fatalf("the token does not verify with the public key: %v", err)
		}
		want := satoken.Claims{Namespace: "default", ServiceAccount: "builder", ServiceAccountUID: string(builder.UID),
			PodName: "runner", PodUID: string(pod.UID), Audiences: []string{satoken.Issuer}}
		if c.Namespace != want.Namespace || c.ServiceAccount != want.ServiceAccount || c.ServiceAccountUID != want.ServiceAccountUID ||
			c.PodName != want.PodName || c.PodUID != want.PodUID || !slices.Equal(c.Audiences, want.Audiences) {
			t.Fatalf("claims %+v, want %+v", c, want)
		}
		life := c.Expiry.Sub(c.IssuedAt)
		if life != 3607*time.Second || c.IssuedAt.Before(before) {
			t.Errorf("issued %v for %v", c.IssuedAt, life)
		}
		if !out.Status.ExpirationTimestamp.Time.Equal(c.Expiry) {
			t.Errorf("status expiration %v, token exp %v", out.Status.ExpirationTimestamp, c.Expiry)
		}
		if out.Spec.ExpirationSeconds == nil || *out.Spec.ExpirationSeconds != 3607 {
			t.Errorf("spec.expirationSeconds %v", out.Spec.ExpirationSeconds)
		}
	})

	t.Run("defaults, audiences and the ceiling", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			spec     authenticationv1.TokenRequestSpec
			life     time.Duration
			audience []string
		}{
			{"default", authenticationv1.TokenRequestSpec{}, time.Hour, []string{satoken.Issuer}},
			{"audiences", authenticationv1.TokenRequestSpec{Audiences: []string{"vault", "x"}, ExpirationSeconds: secs(600)}, 10 * time.Minute, []string{"vault", "x"}},
			{"cut to 48h", authenticationv1.TokenRequestSpec{ExpirationSeconds: secs(365 * 24 * 3600)}, 48 * time.Hour, []string{satoken.Issuer}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out, err := sas.CreateToken(ctx, "builder", &authenticationv1.TokenRequest{Spec: tc.spec}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				c, err := satoken.Verify(&key.PublicKey, out.Status.Token, time.Now())
				if err != nil {
					t.Fatal(err)
				}
				if got := c.Expiry.Sub(c.IssuedAt); got != tc.life || !slices.Equal(c.Audiences, tc.audience) || c.PodName != "" {
					t.Errorf("life %v audiences %v pod %q; want %v %v unbound", got, c.Audiences, c.PodName, tc.life, tc.audience)
				}
				if !slices.Equal(out.Spec.Audiences, tc.audience) {
					t.Errorf("spec.audiences %v", out.Spec.Audiences)
				}
			})
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			sa   string
			spec authenticationv1.TokenRequestSpec
			is   func(error) bool
		}{
			{"bound pod missing", "builder", authenticationv1.TokenRequestSpec{BoundObjectRef: podRef("ghost", "")}, apierrors.IsNotFound},
			{"bound pod uid mismatch", "builder", authenticationv1.TokenRequestSpec{BoundObjectRef: podRef(pod.Name, "not-the-uid")}, apierrors.IsConflict},
			{"pod of another service account", "other", authenticationv1.TokenRequestSpec{BoundObjectRef: podRef(pod.Name, pod.UID)}, apierrors.IsBadRequest},
			{"bound to a secret", "builder", authenticationv1.TokenRequestSpec{BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: "s"}}, apierrors.IsBadRequest},
			{"too short", "builder", authenticationv1.TokenRequestSpec{ExpirationSeconds: secs(599)}, apierrors.IsInvalid},
			{"no such service account", "ghost", authenticationv1.TokenRequestSpec{}, apierrors.IsNotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out, err := sas.CreateToken(ctx, tc.sa, &authenticationv1.TokenRequest{Spec: tc.spec}, metav1.CreateOptions{})
				if err == nil {
					t.Fatalf("issued %q", out.Status.Token)
				}
				if !tc.is(err) {
					t.Fatalf("wrong error: %v", err)
				}
			})
		}
	})

	t.Run("dry run issues nothing", func(t *testing.T) {
		out, err := sas.CreateToken(ctx, "builder", &authenticationv1.TokenRequest{}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatal(err)
		}
		if out.Status.Token != "" {
			t.Errorf("dry run returned a token")
		}
	})

	t.Run("only create", func(t *testing.T) {
		if r := do(t, s, http.MethodGet, "/api/v1/namespaces/default/serviceaccounts/builder/token", "", nil); r.code != http.StatusMethodNotAllowed {
			t.Errorf("GET: %d %s", r.code, r.body)
		}
	})
}

func TestTokenRequestWithoutKey(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	if _, err := s.Client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "builder"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "builder", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("want 503, got %v", err)
	}
	if st := err.(apierrors.APIStatus).Status(); st.Message != "service account tokens are not configured" {
		t.Errorf("message %q", st.Message)
	}
}

// Discovery lists serviceaccounts/token as kube-apiserver does.
func TestTokenRequestDiscovery(t *testing.T) {
	s := apitest.NewServer(t)
	list, err := s.Client.Discovery().ServerResourcesForGroupVersion("v1")
	if err != nil {
		t.Fatal(err)
	}
	var found *metav1.APIResource
	for i := range list.APIResources {
		if list.APIResources[i].Name == "serviceaccounts/token" {
			found = &list.APIResources[i]
		}
	}
	if found == nil {
		t.Fatal("serviceaccounts/token not in /api/v1")
	}
	if found.Group != "authentication.k8s.io" || found.Version != "v1" || found.Kind != "TokenRequest" ||
		!slices.Equal(found.Verbs, []string{"create"}) || !found.Namespaced {
		t.Errorf("serviceaccounts/token: %+v", *found)
	}
}
