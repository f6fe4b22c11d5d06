package gateway

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test stops what it started: gateways, backends, sessions.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
