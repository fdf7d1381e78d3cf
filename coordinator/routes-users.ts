/** Routes for users and sessions. */
import type { Hono, MiddlewareHandler } from 'hono'
import { CreateFirstUserRequest, LoginRequest } from '../sdk/api-types.ts'
import type { FirstUserStatus, LoginResponse } from '../sdk/api-types.ts'
import type { Coordinator } from './coordinator.ts'
import { readJson, type AppEnv } from './http.ts'
import { toUser } from './users.ts'

export function userRoutes(
  app: Hono<AppEnv>,
  coordinator: Coordinator,
  auth: MiddlewareHandler<AppEnv>,
): void {
  const { users } = coordinator

  app.get('/api/v1/users/first', async (c) => {
    const body: FirstUserStatus = { hasFirstUser: await users.hasFirstUser() }
    return c.json(body)
  })

  app.post('/api/v1/users/first', async (c) => {
    const request = await readJson(c, CreateFirstUserRequest)
    return c.json(toUser(await users.createFirstUser(request)), 201)
  })

  app.post('/api/v1/users/login', async (c) => {
    const request = await readJson(c, LoginRequest)
    const { token, user } = await users.login(request.username, request.password)
    const body: LoginResponse = { sessionToken: token, user: toUser(user) }
    return c.json(body)
  })

  app.post('/api/v1/users/logout', auth, async (c) => {
    await users.logout(c.get('token'))
    return c.body(null, 204)
  })

  app.get('/api/v1/users/me', auth, (c) => c.json(toUser(c.get('user'))))
}
