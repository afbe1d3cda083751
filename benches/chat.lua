-- wrk script shared by benches/load.sh and benches/soak.sh: a non-streaming chat request with
-- the client token from $TOKEN.
wrk.method = "POST"
wrk.body = '{"model":"m1","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
