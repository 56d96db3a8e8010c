package main

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/apitest"
)

func TestKube(t *testing.T) {
	// Secrets are refused the way RBAC refuses them, to see the API's
	// message come through.
	forbidden := `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,` +
		`"message":"secrets is forbidden: User \"system:serviceaccount:team:default\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""}`
	s := apitest.NewServer(t, apitest.Options{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/secrets") {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				w.Write([]byte(forbidden))
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := kubeWith(s.Config, "default", args, &out)
		return out.String(), err
	}
	cases := []struct {
		name    string
		args    []string
		out     string
		errPart string
	}{
		{"create", []string{"create", "configmap", "made-here", "--from-literal", "k=v"}, "configmap/made-here created\n", ""},
		{"create in a namespace", []string{"create", "configmap", "sys", "-n", "kube-system"}, "configmap/sys created\n", ""},
		{"get", []string{"get", "configmaps"}, "made-here\n", ""},
		{"get -n", []string{"get", "cm", "-n", "kube-system"}, "sys\n", ""},
		{"already exists", []string{"create", "configmap", "made-here"}, "", `configmaps "made-here" already exists`},
		{"forbidden", []string{"get", "secrets", "-n", "team"}, "", `cannot list resource "secrets"`},
		{"unknown resource", []string{"get", "widgets"}, "", "unknown resource"},
		{"bad usage", []string{"delete", "configmap", "x"}, "", "usage"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			if tc.errPart == "" && err != nil {
				t.Fatalf("error: %v", err)
			}
			if tc.errPart != "" && (err == nil || !strings.Contains(err.Error(), tc.errPart)) {
				t.Fatalf("error %v, want one containing %q", err, tc.errPart)
			}
			if out != tc.out {
				t.Errorf("printed %q, want %q", out, tc.out)
			}
		})
	}
	if cm, err := s.Client.CoreV1().ConfigMaps("default").Get(t.Context(), "made-here", metav1.GetOptions{}); err != nil || cm.Data["k"] != "v" {
		t.Errorf("created configmap: %v %v", cm, err)
	}
}

// Outside a pod there is no in-cluster configuration: exit 1 with why.
func TestKubeOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if code := run([]string{"kube", "get", "configmaps"}); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
}
