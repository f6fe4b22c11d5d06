package cluster

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"mailgate/test/harness"
	"mailgate/test/pebbletest"
	"mailgate/test/pop3client"
)

// tls.acme.storage: redis: three instances against Pebble obtain one
// certificate (one of them asks the CA, the others load it from Redis) and
// all serve it; Redis holds it, and no password.
func TestACMEStorageOnRedisOneCertificateForThree(t *testing.T) {
	pebble := pebbletest.Start(t, pebbletest.Options{AlwaysValid: true})
	r := startRedis(t)
	a := newAccount(t, 1)
	var gs []*harness.Gateway
	for i := range 3 {
		yaml := gatewayYAML(t, r, gwOptions{instance: fmt.Sprintf("gw%d", i+1)})
		yaml = strings.Replace(yaml, "tls: none, allow_plaintext_auth: true}",
			"tls: none, allow_plaintext_auth: true}\n  - {name: pop3s, protocol: pop3, address: \"127.0.0.1:0\", tls: implicit}", 1)
		yaml += fmt.Sprintf(`tls:
  acme:
    domains: [mail.test]
    email: postmaster@mail.test
    ca: %q
    ca_root: %q
    storage: redis
    challenges: {tls_alpn: "127.0.0.1:%d"}
`, pebble.Directory, pebble.CARoot, pebbletest.FreePorts(t, 1)[0])
		gs = append(gs, harness.Start(t, yaml))
	}
	roots := pebble.Roots(t)
	var serials []string
	for i, g := range gs {
		c, err := pop3client.DialTLS(g.Addr("pop3s"), &tls.Config{RootCAs: roots, ServerName: "mail.test"}, 10*time.Second)
		if err != nil {
			t.Fatalf("instance %d: POP3S trusting only Pebble: %v", i+1, err)
		}
		leaf := c.Conn().(*tls.Conn).ConnectionState().PeerCertificates[0]
		serials = append(serials, leaf.SerialNumber.String())
		if err := c.Login(a.User, a.Pass); err != nil {
			t.Fatalf("instance %d: login over POP3S: %v", i+1, err)
		}
		c.Quit()
		c.Close()
	}
	if serials[0] != serials[1] || serials[1] != serials[2] {
		t.Errorf("the instances serve different certificates: serials %v", serials)
	}
	obtained := 0
	for _, g := range gs {
		obtained += strings.Count(g.Logs(), `"msg":"certificate obtained successfully"`)
	}
	if obtained != 1 {
		t.Errorf("%d certificates obtained from the CA for three instances, want 1", obtained)
	}
	rc := r.Client(t)
	if n := rc.Exists(t.Context(), "t:{acme}:data").Val(); n != 1 {
		t.Errorf("no certmagic data in Redis under the cluster's key_prefix")
	}
}
