// One aedes MQTT broker node of a cluster whose state lives in Redis (tests, benchmarks).
//
//   node aedes-node.js --port 18830 --redis-port 6390 --id node-a [--heartbeat-ms 500]
//
// Sessions, subscriptions, queued QoS 1 messages, retained messages and Last Wills are
// kept in Redis (aedes-persistence-redis); messages between nodes travel over Redis
// pub/sub (mqemitter-redis). Any node can therefore die: a client reconnecting to
// another node finds its session there, and a surviving node publishes the Last Wills
// of the dead node's clients once its heartbeat is 3 intervals old.
// MQTT 3.1.1 only (aedes has no MQTT 5 and no shared subscriptions).
'use strict'

const net = require('net')
const { parseArgs } = require('util')

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    'redis-host': { type: 'string', default: '127.0.0.1' },
    'redis-port': { type: 'string' },
    id: { type: 'string' },
    'heartbeat-ms': { type: 'string', default: '500' }
  }
})
if (!args.port || !args['redis-port'] || !args.id) {
  console.error('usage: aedes-node.js --port P --redis-port R --id NODE [--heartbeat-ms MS]')
  process.exit(2)
}
const redis = { host: args['redis-host'], port: Number(args['redis-port']) }

const mq = require('mqemitter-redis')(redis)
const persistence = require('aedes-persistence-redis')(redis)
const aedes = require('aedes')({
  id: args.id,
  mq,
  persistence,
  heartbeatInterval: Number(args['heartbeat-ms']),
  concurrency: 1000,
  queueLimit: 1000
})

const server = net.createServer({ noDelay: true }, aedes.handle)
server.listen(Number(args.port), args.host, () => {
  console.log(JSON.stringify({ event: 'broker.listening', node: args.id, port: Number(args.port) }))
})

aedes.on('clientError', (client, err) => {
  console.log(JSON.stringify({ event: 'client.error', node: args.id, client: client && client.id, error: err.message }))
})
aedes.on('connectionError', (client, err) => {
  console.log(JSON.stringify({ event: 'connection.error', node: args.id, client: client && client.id, error: err.message }))
})
aedes.on('error', (err) => {
  console.log(JSON.stringify({ event: 'broker.error', node: args.id, error: String(err) }))
})

function shutdown () {
  server.close()
  aedes.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
