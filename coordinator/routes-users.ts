/** Routes for users, sessions and API tokens. */
import { z } from 'zod'
import {
  ApiToken,
  ChangePasswordRequest,
  CreateApiTokenRequest,
  CreateApiTokenResponse,
  CreateFirstUserRequest,
  CreateUserRequest,
  FirstUserStatus,
  ListQuery,
  LoginRequest,
  LoginResponse,
  UpdateRolesRequest,
  User,
} from '../sdk/api-types.ts'
import { isMeshError } from '../sdk/errors.ts'
import type { Coordinator } from './coordinator.ts'
import { clientAddress, setNextPage, slicePage, type AppContext } from './http.ts'
import { route, type AnyRoute } from './routes.ts'
import { toUser } from './users.ts'

const USERS = 'Users'
const TOKENS = 'API tokens'

/** `:name` of a user route: a username, or `me` for the caller. */
function userParam(c: AppContext): string {
  const name = c.req.param('name') ?? ''
  return name === 'me' ? c.get('user').username : name
}

export function userRoutes(coordinator: Coordinator): AnyRoute[] {
  const { users, userAdmin, tokens, metrics } = coordinator

  return [
    route({
      method: 'GET',
      path: '/api/v1/users/first',
      operationId: 'getFirstUserStatus',
      summary: 'Whether the first user (the owner) exists yet',
      tag: USERS,
      auth: 'none',
      response: FirstUserStatus,
      handler: async () => ({ hasFirstUser: await users.hasFirstUser() }),
    }),

    route({
      method: 'POST',
      path: '/api/v1/users/first',
      operationId: 'createFirstUser',
      summary: 'Create the first user, who becomes the owner',
      tag: USERS,
      auth: 'none',
      body: CreateFirstUserRequest,
      response: User,
      status: 201,
      audit: 'user.create-first',
      target: (_c, body) => `user:${body?.username ?? ''}`,
      handler: async (c, { body }) => {
        c.set('auditActor', body.username)
        return toUser(await users.createFirstUser(body))
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/users/login',
      operationId: 'login',
      summary: 'Log in with a username (or email) and password; opens a session',
      tag: USERS,
      auth: 'none',
      body: LoginRequest,
      response: LoginResponse,
      audit: 'session.login',
      target: (_c, body) => `user:${body?.username ?? ''}`,
      handler: async (c, { body }) => {
        c.set('auditActor', body.username)
        try {
          const { token, user } = await users.login(body.username, body.password, clientAddress(c))
          return { sessionToken: token, user: toUser(user) }
        } catch (err) {
          if (isMeshError(err)) {
            if (err.code === 'MESH_BAD_CREDENTIALS') metrics.loginFailed('bad_credentials')
            if (err.code === 'MESH_RATE_LIMITED') metrics.loginFailed('rate_limited')
            if (err.code === 'MESH_LOGIN_LOCKED') metrics.loginFailed('locked')
            if (err.code === 'MESH_USER_SUSPENDED') metrics.loginFailed('suspended')
          }
          throw err
        }
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/users/logout',
      operationId: 'logout',
      summary: 'End the session the request is made with',
      tag: USERS,
      auth: 'session',
      action: 'self:read',
      produces: 'none',
      status: 204,
      audit: 'session.logout',
      target: (c) => `user:${c.get('user').username}`,
      handler: async (c) => {
        await users.logout(c.get('token'))
        return c.body(null, 204)
      },
    }),

    route({
      method: 'GET',
      path: '/api/v1/users/me',
      operationId: 'getMe',
      summary: 'The logged-in user',
      tag: USERS,
      auth: 'session',
      action: 'self:read',
      response: User,
      handler: async (c) => toUser(c.get('user')),
    }),

    route({
      method: 'GET',
      path: '/api/v1/users',
      operationId: 'listUsers',
      summary: 'List users, by username',
      tag: USERS,
      auth: 'session',
      action: 'user:read',
      query: ListQuery,
      paginated: true,
      response: z.array(User),
      handler: async (c, { query }) => {
        const { items, more } = await userAdmin.list(query)
        setNextPage(c, query, more)
        return items.map(toUser)
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/users',
      operationId: 'createUser',
      summary: 'Create a user (default role: member)',
      tag: USERS,
      auth: 'session',
      action: 'user:create',
      body: CreateUserRequest,
      response: User,
      status: 201,
      audit: 'user.create',
      target: (_c, body) => `user:${body?.username ?? ''}`,
      handler: async (c, { body }) => toUser(await userAdmin.create(c.get('user'), body)),
    }),

    route({
      method: 'GET',
      path: '/api/v1/users/:name',
      operationId: 'getUser',
      summary: 'A user by name',
      tag: USERS,
      auth: 'session',
      action: 'user:read',
      response: User,
      handler: async (c) => toUser(await userAdmin.find(userParam(c))),
    }),

    route({
      method: 'PUT',
      path: '/api/v1/users/:name/roles',
      operationId: 'setUserRoles',
      summary: "Replace a user's roles",
      tag: USERS,
      auth: 'session',
      action: 'user:update',
      body: UpdateRolesRequest,
      response: User,
      audit: 'user.roles',
      target: (c) => `user:${userParam(c)}`,
      handler: async (c, { body }) =>
        toUser(await userAdmin.setRoles(c.get('user'), userParam(c), body.roles)),
    }),

    route({
      method: 'POST',
      path: '/api/v1/users/:name/suspend',
      operationId: 'suspendUser',
      summary: 'Suspend a user: their sessions, tokens and mesh tickets stop working at once',
      tag: USERS,
      auth: 'session',
      action: 'user:suspend',
      response: User,
      audit: 'user.suspend',
      target: (c) => `user:${userParam(c)}`,
      handler: async (c) =>
        toUser(await userAdmin.setStatus(c.get('user'), userParam(c), 'suspended')),
    }),

    route({
      method: 'POST',
      path: '/api/v1/users/:name/activate',
      operationId: 'activateUser',
      summary: 'Activate a suspended user',
      tag: USERS,
      auth: 'session',
      action: 'user:suspend',
      response: User,
      audit: 'user.activate',
      target: (c) => `user:${userParam(c)}`,
      handler: async (c) =>
        toUser(await userAdmin.setStatus(c.get('user'), userParam(c), 'active')),
    }),

    route({
      method: 'DELETE',
      path: '/api/v1/users/:name',
      operationId: 'deleteUser',
      summary: 'Delete a user who has no workspaces left',
      tag: USERS,
      auth: 'session',
      action: 'user:delete',
      produces: 'none',
      status: 204,
      audit: 'user.delete',
      target: (c) => `user:${userParam(c)}`,
      handler: async (c) => {
        await userAdmin.delete(c.get('user'), userParam(c))
        return c.body(null, 204)
      },
    }),

    route({
      method: 'PUT',
      path: '/api/v1/users/:name/password',
      operationId: 'changePassword',
      summary:
        "Change a password: your own (`me`, with oldPassword; your other sessions end) or another user's (needs user:update)",
      tag: USERS,
      auth: 'session',
      action: 'self:update',
      anyAction: 'user:update',
      subject: userParam,
      body: ChangePasswordRequest,
      produces: 'none',
      status: 204,
      audit: 'user.password',
      target: (c) => `user:${userParam(c)}`,
      handler: async (c, { body }) => {
        await userAdmin.changePassword(c.get('user'), userParam(c), body, c.get('token'))
        return c.body(null, 204)
      },
    }),

    route({
      method: 'GET',
      path: '/api/v1/tokens',
      operationId: 'listApiTokens',
      summary: 'Your API tokens (never the tokens themselves)',
      tag: TOKENS,
      auth: 'session',
      action: 'token:manage',
      query: ListQuery,
      paginated: true,
      response: z.array(ApiToken),
      handler: async (c, { query }) => {
        const all: ApiToken[] = []
        for await (const token of tokens.list(c.get('user').id)) all.push(token)
        return slicePage(c, query, all)
      },
    }),

    route({
      method: 'POST',
      path: '/api/v1/tokens',
      operationId: 'createApiToken',
      summary: 'Create an API token; the answer holds the token, shown this once',
      tag: TOKENS,
      auth: 'session',
      action: 'token:manage',
      body: CreateApiTokenRequest,
      response: CreateApiTokenResponse,
      status: 201,
      audit: 'token.create',
      target: (c, body) => `token:${c.get('user').username}/${body?.name ?? ''}`,
      handler: async (c, { body }) =>
        tokens.create(c.get('user').id, body.name, body.lifetimeSeconds),
    }),

    route({
      method: 'DELETE',
      path: '/api/v1/tokens/:name',
      operationId: 'deleteApiToken',
      summary: 'Delete one of your API tokens; it stops working at once',
      tag: TOKENS,
      auth: 'session',
      action: 'token:manage',
      produces: 'none',
      status: 204,
      audit: 'token.delete',
      target: (c) => `token:${c.get('user').username}/${c.req.param('name') ?? ''}`,
      handler: async (c) => {
        await tokens.delete(c.get('user').id, c.req.param('name') ?? '')
        return c.body(null, 204)
      },
    }),
  ]
}
